"""`mirage score` and `mirage report`: score a suite's outputs, then lay the study out as a document."""

from __future__ import annotations

from pathlib import Path

import click

from core.cli import emit_json, json_option, open_workspace, workspace_option


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("score")
@click.option("--suite", required=True, help="Suite whose stored outputs to score.")
@click.option("--models", help="Comma-separated models (default: every model with outputs on the suite).")
@click.option(
    "--teacher",
    help="Teacher for the style metrics (default: the one the suite was last scored with, else roles.teacher).",
)
@click.option(
    "--base", help="Base model, recorded for the report's gap closed (default: as last scored, else roles.base)."
)
@click.option(
    "--decoding",
    help="Which outputs to score when a model has several decodings: key=value[,...] (e.g. temperature=0.7)"
    " or a decoding id; default: each model's latest decoding. Decodings are never mixed.",
)
@click.option("--judge", help="Endpoint model to use as LLM judge (default: roles.judge; none if empty).")
@click.option("--no-judge", is_flag=True, help="Skip the judge even if roles.judge is set.")
@click.option("--embed", is_flag=True, help="Also embedding similarity to the teacher (all-MiniLM-L6-v2).")
@click.option("--loglik", is_flag=True, help="Multiple choice: also accuracy by choice log-likelihood (local models).")
@click.option("--workers", default=2, show_default=True, help="Parallel sandboxes for code tests.")
@click.option("--toxicity", is_flag=True, help="Also toxicity by the local classifier in defaults.toxicity_model.")
@click.option("--toxicity-model", metavar="PATH", help="A local sequence-classification folder for --toxicity.")
@click.option("--judge-concurrency", type=int, help="Judge requests in flight (default: defaults.judge_concurrency).")
@json_option
@workspace_option
@click.pass_context
def score(
    ctx,
    suite,
    models,
    teacher,
    base,
    decoding,
    judge,
    no_judge,
    embed,
    loglik,
    workers,
    toxicity,
    toxicity_model,
    judge_concurrency,
    as_json,
):
    """Score every output on a suite (cached), then print per model × task × metric aggregates."""
    from core.runtime.progress import drive
    from core.scores import decodings, scoring
    from core.scores.aggregate import aggregate

    ws = open_workspace(ctx)
    judge = None if no_judge else (judge or ws.config.roles.judge or None)
    selector = decodings.parse_selector(decoding)
    counts = drive(
        scoring.score_suite(
            ws,
            suite,
            models=_names(models),
            teacher=teacher,
            base=base,
            decoding=selector,
            judge=judge,
            embed=embed,
            loglik=loglik,
            toxicity=toxicity,
            toxicity_model=toxicity_model,
            judge_concurrency=judge_concurrency,
            workers=workers,
        ),
        f"scoring {suite}",
        quiet=as_json,
    )
    records = aggregate(ws, suite, models=counts["models"], teacher=counts["teacher"], decoding=selector)
    from core.analysis.imported import compare_imported

    imported = compare_imported(
        ws, suite, models=counts["models"], decoding=selector
    )  # other tools' figures, beside mirage's
    if as_json:
        emit_json(records + imported)
        return
    click.echo(
        f"{counts['outputs']} outputs: {counts['computed']} scores computed, {counts['cached']} cached"
        f"; teacher: {counts['teacher'] or 'none'}; base: {counts['base'] or 'none'}",
        err=True,
    )
    for model, dec in counts["decodings"].items():
        click.echo(f"  {model}: decoding {decodings.label(dec)}", err=True)
    print_long(records)
    if imported:
        _print_imported(imported)


def long_rows(records: list[dict]) -> list[dict]:
    """The aggregates in long form, a row per model × task × metric (percent for rates), tasks in
    order ("all" first), metrics in the report's column order; the JSON has them unscaled."""
    from core.analysis.report import fmt, fmt_ci
    from core.api import registry

    order = {m: k for k, m in enumerate(registry.names(registry.metrics()))}
    models = list(dict.fromkeys(r["model"] for r in records))
    rows = sorted(
        records,
        key=lambda r: (
            r["task"] != "all",
            r["task"],
            models.index(r["model"]),
            order.get(r["metric"], 999),
            r["metric"],
        ),
    )
    return [
        {
            "model": r["model"],
            "task": r["task"],
            "metric": r["metric"],
            "value": fmt(r["metric"], r["value"]),
            "95% CI": fmt_ci(r["metric"], r["ci_low"], r["ci_high"]),
            "n": r["n"],
        }
        for r in rows
    ]


def print_long(records: list[dict]) -> None:
    """One table per task; each model a heading row, then its metrics one a row. A column per
    model squeezed 18 models to one character each at 80 columns; this reads at 80 whatever the
    number of models (the widest cell is a metric name)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    rows = long_rows(records)
    for task in dict.fromkeys(r["task"] for r in rows):
        table = Table(title=escape(f"task: {task}"), show_edge=False, header_style="bold")
        for c, justify in (("model / metric", "left"), ("value", "right"), ("95% CI", "left"), ("n", "right")):
            table.add_column(c, justify=justify, no_wrap=True)
        model = None
        for r in (r for r in rows if r["task"] == task):
            if r["model"] != model:
                if model is not None:
                    table.add_section()
                model = r["model"]
                table.add_row(f"[bold]{escape(model)}[/bold]", "", "", "")
            table.add_row("  " + escape(r["metric"]), escape(r["value"]), escape(r["95% CI"]), str(r["n"]))
        console.print(table)


def _print_imported(imported: list[dict]) -> None:
    from core.analysis.report import fmt
    from core.cli import print_table

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
@click.option("--decoding", help="Which outputs when a model has several decodings (as for `score`).")
@workspace_option
@click.pass_context
def report(ctx, suite, fmt_name, out, models, teacher, base, imitation, data, decoding):
    """Table 1 (factuality), Table 2 (style vs teacher), gap closed vs coverage, sweeps; md, json or html."""
    from core.analysis import report as rep_mod
    from core.scores.decodings import parse_selector

    ws = open_workspace(ctx)
    rep = rep_mod.build(
        ws,
        suite,
        models=_names(models),
        teacher=teacher,
        base=base,
        imitation=_names(imitation),
        data=data,
        decoding=parse_selector(decoding),
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
