"""The study as one resumable job (kind "study"), and what `mirage demo` and the TUI call to run it.

`mirage demo` creates a workspace, then submits one study job whose handler (`run_job`) walks
STEPS in order. Heavy steps run as child jobs, so the Jobs screen shows each one with its own
progress and loss curve. A rerun (or `mirage jobs resume` after a crash) skips finished work: child
jobs that finished with the same config are reused, generations and scores are cached by their
inputs. Each step records a "step" event with what it did (`new`, `cached`, `seconds`), which the
tests and the README read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from core.runtime import jobs
from core.store.workspace import Workspace
from core.study.plan import Plan, Study
from core.study.report import report_path
from core.study.steps import STEPS


# -- roles ------------------------------------------------------------------------------------------------
def set_roles(ws: Workspace, plan: Plan) -> None:
    """Point the workspace's roles at the demo's models (the TUI's Compare and Analysis read them)."""
    path = ws.config_path
    text = path.read_text(encoding="utf-8")
    lines, out, in_roles = text.splitlines(), [], False
    wanted = {
        "teacher": json.dumps(plan.teacher),
        "base": json.dumps(plan.base),
        "imitation": json.dumps([plan.broad_model, plan.task_model]),
    }
    for ln in lines:
        stripped = ln.strip()
        if stripped.startswith("["):
            in_roles = stripped == "[roles]"
        key = stripped.split("=", 1)[0].strip() if "=" in stripped else None
        if in_roles and key in wanted:
            out.append(f"{key} = {wanted.pop(key)}")
            continue
        out.append(ln)
    if wanted:  # no [roles] table (or keys missing): add them
        out += ["", "[roles]"] + [f"{k} = {v}" for k, v in wanted.items()]
    new = "\n".join(out) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
        ws.__dict__.pop("config", None)  # cached_property: reread on next use


# -- the job handler ------------------------------------------------------------------------------------------
def run_job(ctx) -> dict:
    """Job kind "study": config {quick, samples}. Runs STEPS in order; finished work is skipped."""
    plan = Plan.make(bool(ctx.config.get("quick")), ctx.config.get("samples"))
    study = Study(ctx, plan)
    set_roles(ctx.ws, plan)
    summary: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        for i, step in enumerate(STEPS):
            ctx.check_cancel()
            ctx.event(
                step=i,
                total_steps=len(STEPS),
                message=f"[{i + 1}/{len(STEPS)}] {step.title}",
                study_step=step.id,
                state="started",
            )
            t0 = time.monotonic()
            res = step.fn(study)
            secs = round(time.monotonic() - t0, 1)
            res = {**res, "seconds": secs}
            summary[step.id] = res
            how = "cached" if res.get("cached") else f"{res.get('new', 0)} new"
            ctx.event(
                step=i + 1,
                total_steps=len(STEPS),
                message=f"[{i + 1}/{len(STEPS)}] {step.title}: {how}, {secs:.0f} s",
                study_step=step.id,
                state="done",
                result=res,
            )
    finally:
        study.stop_teacher()
    total = round(time.monotonic() - t_start, 1)
    ctx.event(
        message=f"study done in {total:.0f} s; report: {report_path(ctx.ws, plan)}",
        study_summary=summary,
        seconds=total,
        report=str(report_path(ctx.ws, plan)),
    )
    return summary


# -- entry points for the command -------------------------------------------------------------------------------
def prepare_workspace(path: str | Path | None) -> Workspace:
    return Workspace.init(path or "demo-workspace")


def active_study(ws: Workspace, plan: Plan) -> dict | None:
    for j in reversed(jobs.list_jobs(ws, kind="study")):
        if j["status"] in jobs.ACTIVE and j["config"] == plan.to_config():
            return j
    return None


def start(ws: Workspace, plan: Plan, *, detach: bool = True, on_event=None) -> int:
    """Start (or attach to) the study job; returns its id."""
    running = active_study(ws, plan)
    if running:
        return running["id"]
    name = "demo study" + (" (quick)" if plan.quick else "")
    return jobs.submit(ws, "study", name, plan.to_config(), detach=detach, on_event=on_event)


def step_results(ws: Workspace, job_id: int) -> dict[str, dict]:
    """{step id: result} recorded by a study job (what each step did: new, cached, seconds)."""
    out = {}
    for ev in jobs.events(ws, job_id):
        d = ev["data"]
        if d.get("state") == "done" and d.get("study_step"):
            out[d["study_step"]] = d.get("result", {})
    return out
