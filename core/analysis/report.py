"""The study in one document: Table 1 (factuality), Table 2 (style vs teacher), gap closed, sweeps.

`build(ws, suite)` gathers the numbers (a dict, also the JSON format); `render_md` and
`render_html` lay them out. The HTML is self-contained: inline CSS, no scripts, no external assets.
"""

from __future__ import annotations

import html
import json

from core.api import registry
from core.api.suites import suite_kind
from core.data.datasets import get_suite
from core.errors import NotFound
from core.models import registry as model_registry
from core.scores import analyses
from core.scores import decodings as D
from core.scores.aggregate import aggregate
from core.scores.outputs import recorded_roles, resolve_base, resolve_roles
from core.store.workspace import Workspace, now


def build(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    base: str | None = None,
    imitation: list[str] | None = None,
    data: str | None = None,
    decoding: dict | str | None = None,
) -> dict:
    """Every number of the report, from stored scores (run `score_suite` first).

    The teacher and base are the ones named, else those the suite was last scored with, else the
    configured roles; every style number is measured against that one teacher.
    """
    s = get_suite(ws, suite)
    models, teacher = resolve_roles(ws, suite, models, teacher)
    records = aggregate(ws, suite, models=models, teacher=teacher, decoding=decoding)
    if not records:
        raise NotFound(f"no scores on suite '{suite}': run `mirage score --suite {suite}` first")
    roles = ws.config.roles
    base = resolve_base(ws, suite, models, base)
    _, decs = D.select(ws, s["id"], models, decoding)
    imitation = imitation or [m for m in roles.imitation if m in models]
    if not imitation and base:
        imitation = [
            m for m in models if model_registry.lineage(ws, m).get("base") == base and m not in (base, teacher)
        ]
    metrics_present = {r["metric"] for r in records}
    table1, table2 = registry.table_metrics(1), registry.table_metrics(2)
    left_out = _all_zero_style(records, table2)
    out = {
        "suite": suite,
        "kind": s["kind"],
        "generated_at": now(),
        "models": models,
        "teacher": teacher,
        "base": base,
        "imitation": imitation,
        "table1": [r for r in records if r["metric"] in table1],
        "table2": [r for r in records if r["metric"] in table2 and r["task"] == "all" and r["metric"] not in left_out],
        "table1_metrics": [m for m in table1 if m in metrics_present],
        "table2_metrics": [m for m in table2 if m in metrics_present and m not in left_out],
        "table2_left_out": left_out,
        "decodings": {m: json.loads(d or "{}") for m, d in decs.items()},
        "scored_with": recorded_roles(ws, suite),
        # Which Table 1 column compares with published numbers (None: the suite has no such rule).
        "comparable_metric": "exact_match_official" if "exact_match_official" in metrics_present else None,
        "gap_closed": [],
        "gap_vs_support": [],
        "comparisons": [],
        "sweep": [],
    }
    if base and teacher:
        for imit in imitation:
            gaps = analyses.gap_closed(ws, suite, base=base, imitation=imit, teacher=teacher)
            out["gap_closed"].extend(gaps)
            dataset = data or model_registry.lineage(ws, imit).get("data")
            support = {}
            if dataset:
                try:
                    from core.coverage.compute import task_support

                    support = task_support(ws, dataset, suite)
                except NotFound:
                    support = {}
            if support:
                for g in gaps:
                    g["support"] = support.get(g["task"])
                out["gap_vs_support"].append(
                    {"imitation_model": imit, "data": dataset, **analyses.gap_vs_support(gaps, support)}
                )
            try:
                out["comparisons"].append(analyses.compare(ws, suite, base, imit))
            except NotFound:
                pass
    # Metric against imitation tokens: adapters whose lineage records their token budget.
    primary = suite_kind(s["kind"]).verdict_metric(metrics_present)
    if primary:
        by_model = {r["model"]: r for r in records if r["metric"] == primary and r["task"] == "all"}
        for m in models:
            tokens = model_registry.lineage(ws, m).get("tokens")
            if m == base:
                tokens = 0
            if tokens is not None and m in by_model:
                r = by_model[m]
                out["sweep"].append(
                    {
                        "model": m,
                        "tokens": tokens,
                        "metric": primary,
                        "value": r["value"],
                        "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"],
                        "n": r["n"],
                    }
                )
        out["sweep"].sort(key=lambda r: r["tokens"])
    from core.analysis.imported import compare_imported

    out["imported"] = compare_imported(
        ws, suite, models=models, decoding=decoding
    )  # other tools' figures (import results)
    return out


def _all_zero_style(records: list[dict], table2) -> list[str]:
    """Table 2 columns that are 0 for every model that has them, the teacher included (lists and
    summaries on a short-answer suite): noise in that suite's table, so left out and named."""
    values: dict[str, list[float | None]] = {}
    for r in records:
        if r["metric"] in table2 and r["task"] == "all":
            values.setdefault(r["metric"], []).append(r["value"])
    return [m for m in table2 if m in values and all(v == 0 for v in values[m])]


# -- formatting -----------------------------------------------------------------------------------
def _scale(metric: str) -> tuple[int, int]:
    scale = 100 if registry.is_percent(metric) else 1
    return scale, 1 if scale == 100 else 2


def fmt_ci(metric: str, low, high) -> str:
    """An interval as text: `[low, high]`, or `[n/a]` when there is none (a single value)."""
    if low is None or high is None:
        return "[n/a]"
    scale, digits = _scale(metric)
    return f"[{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def fmt(metric: str, value, low=None, high=None, *, n: int | None = None) -> str:
    """A value (percent for rates) and its interval when given; with `n`, an interval that is
    missing shows as `[n/a]` rather than vanishing."""
    if value is None:
        return "n/a"
    scale, digits = _scale(metric)
    s = f"{value * scale:.{digits}f}"
    if (low is not None and high is not None) or n is not None:
        s += " " + fmt_ci(metric, low, high)
    return s


def _pivot(records: list[dict], metrics: list[str], *, by_task: bool) -> tuple[list[str], list[list[str]]]:
    keys = []
    cells = {}
    for r in records:
        k = (r["model"], r["task"]) if by_task else (r["model"],)
        if k not in keys:
            keys.append(k)
        cells[(k, r["metric"])] = fmt(r["metric"], r["value"], r["ci_low"], r["ci_high"], n=r["n"]) + f" (n={r['n']})"
    head = (["model", "task"] if by_task else ["model"]) + metrics
    keys.sort(key=lambda k: (k[1] != "all", k[1], k[0]) if by_task else k)
    rows = [list(k) + [cells.get((k, m), "") for m in metrics] for k in keys]
    return head, rows


def _gap_rows(rep: dict) -> tuple[list[str], list[list[str]]]:
    head = ["imitation", "task", "metric", "base", "imitation score", "teacher", "gap closed", "support", "n"]
    rows = []
    for g in rep["gap_closed"]:
        if g["value"] is not None:
            gc = fmt("ratio", g["value"], g["ci_low"], g["ci_high"])
        elif g.get("teacher_below_base"):
            # Short cells, explained once in the section's note: the whole reason in every row
            # wrapped to ~8 lines a row in an 80-column terminal.
            gc = f"n/a, Δ {fmt(g['metric'], g['imitation_minus_base'])}"
        elif g.get("reason") == "teacher − base interval includes 0":
            gc = "n/a"
        else:
            gc = f"n/a: {g['reason']}"
        rows.append(
            [
                g["imitation_model"],
                g["task"],
                g["metric"],
                fmt(g["metric"], g["base"]),
                fmt(g["metric"], g["imitation"]),
                fmt(g["metric"], g["teacher"]),
                gc,
                "" if g.get("support") is None else f"{g['support']:.3f}",
                str(g["n"]),
            ]
        )
    return head, rows


def sections(rep: dict) -> list[tuple[str, str, tuple[list[str], list[list[str]]] | None]]:
    """(title, note, table) in report order; shared by the Markdown and HTML renderers."""
    secs = []
    secs.append(
        (
            "Table 1 — factuality by model and task",
            "Means with bootstrap 95% intervals (percent); n = outputs scored."
            + (
                " exact_match_official (SQuAD v1.1 normalisation of the whole output, any gold alias) is"
                " the one comparable with published NQ-open numbers; exact_match is mirage's lenient"
                " reading (answer extraction, number words), kept for its scripts."
                if rep.get("comparable_metric") == "exact_match_official"
                else ""
            ),
            _pivot(rep["table1"], rep["table1_metrics"], by_task=True) if rep["table1"] else None,
        )
    )
    secs.append(
        (
            f"Table 2 — style against the teacher ({rep['teacher'] or 'none'})",
            "list/summary: share of items where the teacher did it and the model did too; unigram overlap: "
            "unigram-multiset F1 with the teacher's output; length correlation: Pearson r of output lengths "
            "(words) over items."
            + (
                " judge_preference: the judge's win rate against the teacher (both orders averaged);"
                " judge_preference_lc: AlpacaEval 2's length-controlled win rate."
                if "judge_preference" in rep["table2_metrics"]
                else ""
            )
            + (
                f" Left out, 0 for every model: {', '.join(rep['table2_left_out'])}."
                if rep.get("table2_left_out")
                else ""
            ),
            _pivot(rep["table2"], rep["table2_metrics"], by_task=False) if rep["table2"] else None,
        )
    )
    if rep["gap_closed"]:
        notes = [
            f"{c['imitation_model']}: Spearman rho(gap closed, support) = "
            f"{'n/a' if c['spearman'] is None else format(c['spearman'], '.2f')} over {c['tasks']} tasks"
            f" (coverage of '{c['data']}')"
            for c in rep["gap_vs_support"]
        ]
        secs.append(
            (
                "Gap closed — (imitation − base) / (teacher − base)",
                "n/a: the teacher − base interval includes 0; n/a, Δ: the teacher is below the base, so"
                " imitation can only move toward a weaker teacher (Δ = imitation − base, negative when it"
                " did). " + " ".join(notes),
                _gap_rows(rep),
            )
        )
    if rep["comparisons"]:
        head = [
            "base",
            "imitation",
            "metric",
            "diff (imitation − base)",
            "p (bootstrap)",
            "McNemar p",
            "wrong→right",
            "right→wrong",
            "n",
        ]
        rows = []
        for c in rep["comparisons"]:
            pb = c["paired_bootstrap"]
            mc = c.get("mcnemar") or {}
            tr = c.get("transitions") or {}
            rows.append(
                [
                    c["a"],
                    c["b"],
                    c["metric"],
                    fmt(c["metric"], pb["diff"], pb["ci_low"], pb["ci_high"]),
                    "" if pb["p"] is None else f"{pb['p']:.3g}",
                    "" if not mc else f"{mc['p']:.3g}",
                    str(tr.get("wrong_to_right", "")),
                    str(tr.get("right_to_wrong", "")),
                    str(c["n"]),
                ]
            )
        secs.append(("Paired comparisons", "Same items for both models.", (head, rows)))
    if rep["sweep"]:
        head = ["model", "imitation tokens", "metric", "value"]
        rows = [
            [r["model"], str(r["tokens"]), r["metric"], fmt(r["metric"], r["value"], r["ci_low"], r["ci_high"])]
            for r in rep["sweep"]
        ]
        secs.append(("Metric against imitation tokens", "From the adapters' lineage (base at 0).", (head, rows)))
    if rep.get("imported"):
        secs.append(_imported_section(rep["imported"]))
    return secs


def decodings_line(rep: dict) -> str:
    """`model: decoding; ...`, one decoding per model (scores never mix two)."""
    return "; ".join(f"{m}: {D.label(d)}" for m, d in rep.get("decodings", {}).items())


def _imported_section(records: list[dict]) -> tuple[str, str, tuple[list[str], list[list[str]]]]:
    head = ["model", "task", "tool metric", "tool", "mirage metric", "mirage", "agreement", "kappa", "n"]
    rows = [
        [
            r["model"],
            r["task"],
            r["metric"],
            fmt("exact_match", r["value"], r["ci_low"], r["ci_high"]),
            r["compared_with"] or "—",
            "—" if r["mirage_value"] is None else fmt("exact_match", r["mirage_value"]),
            "—" if r["agreement"] is None else f"{r['agreement']:.1%}",
            "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}",
            str(r["n_both"] or r["n"]),
        ]
        for r in records
    ]
    note = (
        "Per-sample scores another tool wrote (`mirage import results`) and mirage's counterpart on the"
        " same outputs: means (percent), and the share of items where both call the output right or both"
        " wrong (Cohen's kappa beside it)."
    )
    return "Other tools' scores beside mirage's", note, (head, rows)


def render_md(rep: dict, *, level: int = 1) -> str:
    """Markdown; `level` is the heading level of the title (sections go one deeper)."""
    h = "#" * level
    lines = [
        f"{h} mirage report — suite `{rep['suite']}` ({rep['kind']})",
        "",
        f"Models: {', '.join(rep['models'])}. Teacher: {rep['teacher'] or '—'}. Base: {rep['base'] or '—'}. "
        f"Imitation: {', '.join(rep['imitation']) or '—'}. Generated {rep['generated_at']}.",
        "",
    ]
    if rep.get("decodings"):
        lines += [f"Decodings: {decodings_line(rep)}.", ""]
    for title, note, table in sections(rep):
        lines += [f"{h}# {title}", "", note, ""]
        if table is None:
            lines += ["(no scores)", ""]
            continue
        head, rows = table
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        lines.append("")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}.note{color:#555;font-size:.9rem}"""


def _svg_points(points: list[dict], *, x: str, xlabel: str, ylabel: str, log_x: bool = False) -> str:
    """A small inline SVG: one dot per point with its interval as a vertical bar (no external assets)."""
    import math

    pts = [p for p in points if p.get("value") is not None and p.get(x) is not None]
    if len(pts) < 2:
        return ""
    w, h, pad = 520, 220, 44

    def xv(p):
        return math.log10(p[x] + 1) if log_x else p[x]

    xs = [xv(p) for p in pts]
    ys = [v for p in pts for v in (p["value"], p.get("ci_low"), p.get("ci_high")) if v is not None]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = min(0.0, min(ys)), max(1.0, max(ys))

    def sx(v):
        return pad + (v - x0) / ((x1 - x0) or 1) * (w - 2 * pad)

    def sy(v):
        return h - pad - (v - y0) / ((y1 - y0) or 1) * (h - 2 * pad)

    e = html.escape
    out = [
        f'<svg width="{w}" height="{h}" role="img" aria-label="{e(ylabel)} against {e(xlabel)}">',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>',
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle" font-size="12">{e(xlabel)}</text>',
        f'<text x="12" y="{h / 2}" font-size="12" transform="rotate(-90 12 {h / 2})" '
        f'text-anchor="middle">{e(ylabel)}</text>',
        f'<text x="{pad - 4}" y="{sy(y0) + 4}" text-anchor="end" font-size="10">{y0:g}</text>',
        f'<text x="{pad - 4}" y="{sy(y1) + 4}" text-anchor="end" font-size="10">{y1:g}</text>',
    ]
    for p, xx in zip(pts, xs):
        cx = sx(xx)
        if p.get("ci_low") is not None and p.get("ci_high") is not None:
            out.append(
                f'<line x1="{cx:.1f}" y1="{sy(p["ci_low"]):.1f}" x2="{cx:.1f}" y2="{sy(p["ci_high"]):.1f}" '
                f'stroke="#4a78b5" stroke-width="2"/>'
            )
        out.append(
            f'<circle cx="{cx:.1f}" cy="{sy(p["value"]):.1f}" r="4" fill="#1f4e8c"><title>'
            f"{e(str(p.get('label', '')))}: {p['value']:.3f}</title></circle>"
        )
        out.append(
            f'<text x="{cx:.1f}" y="{h - pad + 14}" text-anchor="middle" font-size="10">'
            f"{e(str(p.get('tick', p[x])))}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _charts(rep: dict) -> dict[str, str]:
    """Section title -> inline SVG, for the sections a picture helps."""
    charts = {}
    if rep["sweep"]:
        pts = [{**r, "label": r["model"], "tick": r["tokens"]} for r in rep["sweep"]]
        charts["Metric against imitation tokens"] = _svg_points(
            pts, x="tokens", xlabel="imitation tokens (log scale)", ylabel=rep["sweep"][0]["metric"], log_x=True
        )
    with_support = [g for g in rep["gap_closed"] if g.get("support") is not None and g["task"] != "all"]
    if with_support:
        pts = [{**g, "label": f"{g['imitation_model']} / {g['task']}", "tick": g["task"]} for g in with_support]
        charts["Gap closed — (imitation − base) / (teacher − base)"] = _svg_points(
            pts, x="support", xlabel="coverage support of the task", ylabel="gap closed"
        )
    return charts


def render_html(rep: dict) -> str:
    e = html.escape
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>mirage report — {e(rep['suite'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>mirage report — suite <code>{e(rep['suite'])}</code> ({e(rep['kind'])})</h1>",
        f'<p class="note">Models: {e(", ".join(rep["models"]))}. Teacher: {e(rep["teacher"] or "—")}. '
        f"Base: {e(rep['base'] or '—')}. Imitation: {e(', '.join(rep['imitation']) or '—')}. "
        f"Generated {e(rep['generated_at'])}.</p>",
    ]
    if rep.get("decodings"):
        parts.append(f'<p class="note">Decodings: {e(decodings_line(rep))}.</p>')
    charts = _charts(rep)
    for title, note, table in sections(rep):
        parts.append(f'<h2>{e(title)}</h2><p class="note">{e(note)}</p>')
        if charts.get(title):
            parts.append(charts[title])
        if table is None:
            parts.append("<p>(no scores)</p>")
            continue
        head, rows = table
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown_section(
    ws: Workspace, suite: str, *, models: list[str] | None = None, teacher: str | None = None, level: int = 2
) -> str:
    """The suite's report section in Markdown (headings from `level`), for documents that hold
    several suites (the demo's report)."""
    return render_md(build(ws, suite, models=models, teacher=teacher), level=level)


def render(rep: dict, fmt_name: str) -> str:
    if fmt_name == "json":
        return json.dumps(rep, indent=2, ensure_ascii=False, default=str)
    if fmt_name == "html":
        return render_html(rep)
    return render_md(rep)
