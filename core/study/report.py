"""The study's report: each suite's scores per model in markdown, and where it is written."""

from __future__ import annotations

import re
from pathlib import Path

from core.store.workspace import Workspace
from core.study.plan import BASE_PACKAGED, TEACHER_PACKAGED, Plan


def report_path(ws: Workspace, plan: Plan) -> Path:
    return ws.artifact_dir("demo") / f"report{plan.suffix}.md"


def build_report(ws: Workspace, plan: Plan) -> str:
    """The study's report in markdown: each suite's scores per model, gap closed, coverage."""
    from core.analysis.report import markdown_section

    parts = [f"# mirage demo{' (quick)' if plan.quick else ''}: imitating {TEACHER_PACKAGED} with {BASE_PACKAGED}", ""]
    for _kind, suite in plan.suites:
        parts.append(markdown_section(ws, suite, models=plan.models, teacher=plan.teacher))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def same_report(a: str | None, b: str | None) -> bool:
    """Equal reports, ignoring the time each was generated at."""
    if a is None or b is None:
        return False

    def strip(text: str) -> str:
        return re.sub(r"Generated \S+", "Generated", text)

    return strip(a) == strip(b)
