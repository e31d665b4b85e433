"""The Analysis screen's views of a suite (Table 1 and 2, gap closed, the token sweep, human
checks) and their export as Markdown or JSON."""

from __future__ import annotations

import json

from core.analysis import report
from core.analysis.compare import default_suite
from core.analysis.marks import agreement
from core.analysis.ratings import pairwise_result
from core.errors import BadInput, NotFound
from core.store.workspace import Workspace

# The Analysis screen's views, in order: (id, title). Each exports on its own.
ANALYSIS_VIEWS = (
    ("table1", "Table 1 — factuality"),
    ("table2", "Table 2 — style"),
    ("gap", "Gap closed vs coverage"),
    ("sweep", "Metric vs imitation tokens"),
    ("human", "Human checks"),
)


def suites_with_scores(ws: Workspace) -> list[str]:
    return [
        r[0]
        for r in ws.db.execute(
            "select s.name from suites s where s.status = 'ready' and exists (select 1 from items i"
            " join generations g on g.item_id = i.id join scores sc on sc.generation_id = g.id"
            " where i.suite_id = s.id) order by s.name"
        ).fetchall()
    ]


def analysis(ws: Workspace, suite: str | None = None, *, rater: str | None = None) -> dict:
    """The study's figures for one suite: core.analysis.report's numbers (Table 1 and 2 with bootstrap
    intervals, gap closed with coverage support, the token sweep) plus the human checks."""
    if not suite:
        have = suites_with_scores(ws)
        if not have:
            raise NotFound(
                "no scores yet: run `mirage score --suite NAME` after `mirage generate`", title="Nothing to analyse"
            )
        suite = default_suite(ws, have)
    rep = report.build(ws, suite)
    teacher = rep.get("teacher")
    rep["human"] = {
        "rater": rater,
        "agreement": agreement(ws, suite, rater=rater),
        "pairwise": [
            r
            for r in (
                pairwise_result(ws, suite, m, teacher=teacher, rater=rater)
                for m in rep["models"]
                if teacher and m != teacher
            )
            if r["n"]
        ],
    }
    return rep


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def view_tables(rep: dict, view: str) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) of one Analysis view, formatted as the report formats them."""
    if view == "human":
        h = rep.get("human") or {}
        agree = [
            [r["metric"], str(r["n"]), f"{r['agreement']:.1%}", "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}"]
            for r in h.get("agreement", [])
        ]
        pw = [
            [
                r["model"],
                r["teacher"],
                str(r["n"]),
                f"{r['share']:.1%}",
                f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}]",
                f"{r['wins']}/{r['ties']}/{r['losses']}",
            ]
            for r in h.get("pairwise", [])
        ]
        return [
            (
                "Human marks against automatic metrics",
                "Unsure marks left out; kappa is Cohen's.",
                ["metric", "n", "agreement", "kappa"],
                agree,
            ),
            (
                "Blind pairwise rating against the teacher",
                "Share of outputs rated equal to or better than the teacher's, Wilson 95% interval.",
                ["model", "teacher", "n", "≥ teacher", "95% interval", "better/tie/worse"],
                pw,
            ),
        ]
    prefix = {
        "table1": "Table 1",
        "table2": "Table 2",
        "gap": "Gap closed",
        "sweep": "Metric against imitation tokens",
    }.get(view)
    if prefix is None:
        raise BadInput("view", f"unknown view '{view}' (known: {', '.join(v for v, _ in ANALYSIS_VIEWS)})")
    out = []
    for title, note, table in report.sections(rep):
        if title.startswith(prefix):
            head, rows = table if table else ([], [])
            out.append((title, note, head, rows))
    return out


def view_data(rep: dict, view: str):
    """The JSON of one Analysis view (the same records `mirage report --format json` holds)."""
    keys = {
        "table1": ["table1"],
        "table2": ["table2", "table2_left_out"],
        "gap": ["gap_closed", "gap_vs_support"],
        "sweep": ["sweep"],
        "human": ["human"],
    }[view]
    return {"suite": rep["suite"], "view": view, **{k: rep.get(k) for k in keys}}


def export_view(rep: dict, view: str, fmt: str = "md") -> str:
    if view not in dict(ANALYSIS_VIEWS):
        raise BadInput("view", f"unknown view '{view}' (known: {', '.join(v for v, _ in ANALYSIS_VIEWS)})")
    if fmt == "json":
        return json.dumps(view_data(rep, view), indent=2, ensure_ascii=False, default=str)
    if fmt != "md":
        raise BadInput("format", f"unknown export format '{fmt}' (md or json)")
    lines = [f"# mirage — suite `{rep['suite']}`: {dict(ANALYSIS_VIEWS)[view]}", ""]
    for title, note, head, rows in view_tables(rep, view):
        lines += [f"## {title}", "", note, ""]
        lines += (_md_table(head, rows) if rows else ["(nothing yet)"]) + [""]
    return "\n".join(lines)


def save_export(ws: Workspace, rep: dict, view: str, fmt: str = "md") -> str:
    """Write the view to `artifacts/exports/<suite>-<view>.<md|json>`; returns the path."""
    text = export_view(rep, view, fmt)
    path = ws.artifact_dir("exports") / f"{rep['suite']}-{view}.{fmt}"
    path.write_text(text + "\n", encoding="utf-8")
    return str(path)
