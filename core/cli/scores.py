"""`mirage score` and `mirage report`: score a suite's outputs, then lay the study out as a document."""

from __future__ import annotations

from pathlib import Path

import click

from core.cli import emit_json, json_option, open_workspace, print_table, workspace_option


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("score")
@click.option("--suite", required=True, help="Suite whose stored outputs to score.")
@click.option("--models", help="Comma-separated models (default: every model with outputs on the suite).")
@click.option("--teacher", help="Teacher for the style metrics (default: roles.teacher if it has outputs).")
@click.option("--judge", help="Endpoint model to use as LLM judge (default: roles.judge; none if empty).")
@click.option("--no-judge", is_flag=True, help="Skip the judge even if roles.judge is set.")
@click.option("--embed", is_flag=True, help="Also embedding similarity to the teacher (all-MiniLM-L6-v2).")
@click.option("--loglik", is_flag=True, help="Multiple choice: also accuracy by choice log-likelihood (local models).")
@click.option("--workers", default=2, show_default=True, help="Parallel sandboxes for code tests.")
@json_option
@workspace_option
@click.pass_context
def score(ctx, suite, models, teacher, judge, no_judge, embed, loglik, workers, as_json):
    """Score every output on a suite (cached), then print per model × task × metric aggregates."""
    from core.runtime.progress import drive
    from core.scores import scoring
    from core.scores.aggregate import aggregate

    ws = open_workspace(ctx)
    judge = None if no_judge else (judge or ws.config.roles.judge or None)
    counts = drive(
        scoring.score_suite(
            ws, suite, models=_names(models), teacher=teacher, judge=judge, embed=embed, loglik=loglik, workers=workers
        ),
        f"scoring {suite}",
        quiet=as_json,
    )
    records = aggregate(ws, suite, models=counts["models"], teacher=counts["teacher"])
    from core.analysis.imported import compare_imported

    imported = compare_imported(ws, suite, models=counts["models"])  # other tools' figures, beside mirage's
    if as_json:
        emit_json(records + imported)
        return
    from core.analysis.report import fmt
    from core.api import registry

    click.echo(
        f"{counts['outputs']} outputs: {counts['computed']} scores computed, {counts['cached']} cached"
        f"; teacher: {counts['teacher'] or 'none'}",
        err=True,
    )
    # One table per task: a row per metric, a column per model, "value [95% CI] n" in each cell
    # (percent for rates); the JSON has the same numbers unscaled.
    models = [m for m in counts["models"] if any(r["model"] == m for r in records)]
    tasks = sorted({r["task"] for r in records}, key=lambda t: (t != "all", t))
    for task in tasks:
        cells: dict[str, dict] = {}
        for r in records:
            if r["task"] == task:
                cells.setdefault(r["metric"], {"metric": r["metric"]})[r["model"]] = (
                    f"{fmt(r['metric'], r['value'], r['ci_low'], r['ci_high'])} n={r['n']}"
                )
        order = [m for m in registry.names(registry.metrics()) if m in cells]  # the report's column order
        order += sorted(set(cells) - set(order))
        print_table([cells[m] for m in order], ["metric", *models], title=f"task: {task}")
    if imported:
        _print_imported(imported)


def _print_imported(imported: list[dict]) -> None:
    from core.analysis.report import fmt

    rows = [
        {
            "model": r["model"],
            "task": r["task"],
            "tool metric": r["metric"],
            "tool": f"{fmt('exact_match', r['value'], r['ci_low'], r['ci_high'])} n={r['n']}",
            "mirage metric": r["compared_with"] or "—",
            "mirage": "—" if r["mirage_value"] is None else fmt("exact_match", r["mirage_value"]),
            "agreement": "—" if r["agreement"] is None else f"{r['agreement']:.1%} of {r['n_both']}",
            "kappa": "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}",
        }
        for r in imported
    ]
    cols = ["model", "task", "tool metric", "tool", "mirage metric", "mirage", "agreement", "kappa"]
    print_table(rows, cols, title="imported tool scores beside mirage's (same outputs)")


@click.command("report")
@click.option("--suite", required=True)
@click.option("--format", "fmt_name", type=click.Choice(["md", "json", "html"]), default="md", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of standard output.")
@click.option("--models", help="Comma-separated models (default: all with outputs on the suite).")
@click.option("--teacher", help="Teacher (default: roles.teacher).")
@click.option("--base", help="Base model for gap closed (default: roles.base).")
@click.option("--imitation", help="Comma-separated imitation models (default: roles.imitation).")
@click.option("--data", help="Imitation dataset whose coverage to set against gap closed (default: adapter lineage).")
@workspace_option
@click.pass_context
def report(ctx, suite, fmt_name, out, models, teacher, base, imitation, data):
    """Table 1 (factuality), Table 2 (style vs teacher), gap closed vs coverage, sweeps; md, json or html."""
    from core.analysis import report as rep_mod

    ws = open_workspace(ctx)
    rep = rep_mod.build(
        ws, suite, models=_names(models), teacher=teacher, base=base, imitation=_names(imitation), data=data
    )
    text = rep_mod.render(rep, fmt_name)
    if out:
        path = Path(out)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # nothing half-written if it fails midway
        click.echo(f"report written: {path}", err=True)
    else:
        click.echo(text)


@click.command("export")
@click.option("--suite", required=True, help="Suite whose outputs to export.")
@click.option("--models", help="Comma-separated models (default: every model with outputs on the suite).")
@click.option(
    "--format",
    "fmt_name",
    type=click.Choice(["jsonl", "hf", "alpaca-eval"]),
    default="jsonl",
    show_default=True,
    help="jsonl: a record per item × model (`mirage import results` reads it back); hf: a `datasets`"
    " save_to_disk folder; alpaca-eval: MODEL/model_outputs.json per model.",
)
@click.option(
    "--out", type=click.Path(), help="File (jsonl) or folder (hf, alpaca-eval); jsonl default: standard output."
)
@workspace_option
@click.pass_context
def export(ctx, suite, models, fmt_name, out):
    """Export every item, gold, model, output, decoding, fingerprint and score of a suite, per sample."""
    import sys

    from core.analysis.export import export_suite

    ws = open_workspace(ctx)
    summary = export_suite(ws, suite, models=_names(models), fmt=fmt_name, out=out)
    if "lines" in summary:
        sys.stdout.writelines(summary["lines"])
        return
    click.echo(
        f"exported {summary['records']:,} records ({', '.join(summary['models'])}) of suite '{suite}' to {out}",
        err=True,
    )
