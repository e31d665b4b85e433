"""`mirage import data|suite|outputs`: imitation data, evaluation suites and recorded outputs."""

from __future__ import annotations

import click

from core.cli import emit_json, json_option, open_workspace, workspace_option


@click.group("import")
@workspace_option
def import_group():
    """Import imitation data, evaluation suites and recorded outputs into the workspace."""


def _report_lines(summary: dict) -> None:
    if summary.get("skipped_bad"):
        click.echo(f"skipped {summary['skipped_bad']:,} bad rows; reasons in {summary['report']}", err=True)


@import_group.command("data")
@click.argument("files", nargs=-1, required=True)
@click.option("--name", required=True, help="Dataset to create or append to.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "sharegpt", "alpaca", "messages"]),
    default="auto",
    show_default=True,
    help="Record format (auto: detected from the first record).",
)
@click.option("--skip-bad", is_flag=True, help="Import good rows; write bad ones with reasons to a report file.")
@click.option(
    "--source",
    "source",
    metavar="LABEL",
    help="Source label for rows without a `source`/`dataset` field (default: the file name).",
)
@json_option
@workspace_option
@click.pass_context
def import_data_cmd(ctx, files, name, fmt, skip_bad, source, as_json):
    """Import imitation conversations from FILES (JSONL, JSON, CSV, Parquet, .gz, a `datasets` folder)."""
    from core.data.ingest import import_data
    from core.runtime.progress import drive

    ws = open_workspace(ctx)
    summary = drive(import_data(ws, list(files), name, fmt=fmt, skip_bad=skip_bad, source=source), f"importing {name}")
    _report_lines(summary)
    if as_json:
        emit_json(summary)
        return
    if summary["unchanged"]:
        click.echo(
            f"nothing changed: {', '.join(summary['files'])} already in dataset '{name}'"
            f" ({summary['examples']:,} examples)"
        )
    else:
        click.echo(
            f"imported {summary['imported']:,} examples (~{summary['tokens']:,} tokens, format"
            f" {summary['format']}) into '{name}'; {summary['duplicates']:,} duplicates skipped;"
            f" dataset now {summary['examples']:,} examples, ~{summary['total_tokens']:,} tokens (approximate)"
        )
        if summary.get("search_index") == "background":
            click.echo("search index: building in the background (searches wait for it to finish)")


@import_group.command("suite")
@click.argument("file")
@click.option("--name", required=True, help="Suite to create or append to.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "qa", "mc", "code", "prompts"]),
    default="auto",
    show_default=True,
    help="Suite kind (auto: detected from the first record).",
)
@click.option(
    "--task",
    metavar="LABEL",
    help="Task label for every item (default: a task/category/subject field, else the suite name).",
)
@click.option("--skip-bad", is_flag=True, help="Import good rows; write bad ones with reasons to a report file.")
@click.option(
    "--answer-field", metavar="FIELD", help="QA: the field holding the short gold answer(s) (default: answer)."
)
@json_option
@workspace_option
@click.pass_context
def import_suite_cmd(ctx, file, name, fmt, task, skip_bad, answer_field, as_json):
    """Import an evaluation suite: QA (NQ-open), multiple choice (MMLU CSV), code (HumanEval), prompts."""
    from core.data.ingest import import_suite
    from core.runtime.progress import drive

    ws = open_workspace(ctx)
    summary = drive(
        import_suite(ws, file, name, fmt=fmt, task=task, skip_bad=skip_bad, answer_field=answer_field),
        f"importing {name}",
    )
    _report_lines(summary)
    if as_json:
        emit_json(summary)
        return
    if summary["unchanged"]:
        click.echo(f"nothing changed: {summary['file']} already in suite '{name}' ({summary['items']:,} items)")
    else:
        click.echo(
            f"imported {summary['imported']:,} items ({summary['kind']}) into '{name}';"
            f" {summary['duplicates']:,} duplicates skipped; suite now {summary['items']:,} items"
            f" in {summary['tasks']:,} task(s)"
        )


@import_group.command("outputs")
@click.argument("file")
@click.option(
    "--suite",
    required=True,
    help="Suite whose items the outputs answer (matched by prompt, line endings, surrounding blanks and Unicode form aside).",
)
@click.option("--model", required=True, help="Model name to record them under (created as 'recorded').")
@click.option("--skip-bad", is_flag=True, help="Import good rows; write bad ones with reasons to a report file.")
@json_option
@workspace_option
@click.pass_context
def import_outputs_cmd(ctx, file, suite, model, skip_bad, as_json):
    """Attach recorded outputs (instruction, output, generator) of another system to a suite."""
    from core.data.ingest import import_outputs
    from core.runtime.progress import drive

    ws = open_workspace(ctx)
    summary = drive(import_outputs(ws, file, suite, model, skip_bad=skip_bad), f"attaching {model}")
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"attached {summary['matched']:,} outputs of '{model}' to suite '{suite}'"
        f" ({summary['imported']:,} new, {summary['already_present']:,} already there);"
        f" {summary['unmatched']:,} rows matched no item"
    )
    if summary["unmatched"]:
        click.echo(f"unmatched rows listed in {summary['report']}", err=True)
    elif summary.get("skipped_bad"):
        _report_lines(summary)


@import_group.command("results")
@click.argument("paths", nargs=-1, required=True)
@click.option("--suite", help="Suite to create or extend (default: one per task, named as the tool names the task).")
@click.option("--model", help="Model to record the outputs under (default: the tool's model name).")
@click.option(
    "--tool",
    type=click.Choice(["auto", "lm_eval", "inspect", "promptfoo", "alpaca_eval", "mirage"]),
    default="auto",
    show_default=True,
    help="Which tool wrote the files (auto: detected from each file).",
)
@json_option
@workspace_option
@click.pass_context
def import_results_cmd(ctx, paths, suite, model, tool, as_json):
    """Import other tools' per-sample results: lm-eval --log_samples files (or their folder),
    inspect_ai logs (.eval, .json), promptfoo -o results.json, AlpacaEval model_outputs.json /
    annotations.json, or a `mirage export` JSONL: items, outputs and the tool's own scores."""
    from core.data.ingest.results import import_results
    from core.runtime.progress import drive

    ws = open_workspace(ctx)
    summary = drive(import_results(ws, list(paths), suite=suite, model=model, tool=tool), "importing results")
    for note in summary["skipped"]:
        click.echo(f"skipped {note}", err=True)
    if as_json:
        emit_json(summary)
        return
    suites = "; ".join(
        f"'{s['suite']}' ({s['kind']}: {s['items_new']:,} new items, {s['items']:,} in all)" for s in summary["suites"]
    )
    scores = ", ".join(f"{m} ({n:,})" for m, n in sorted(summary["imported_scores"].items())) or "none"
    click.echo(
        f"imported {summary['samples']:,} samples from {', '.join(summary['tools'])} as model(s)"
        f" {', '.join(summary['models'])}: {summary['outputs_new']:,} new outputs,"
        f" {summary['outputs_already']:,} already there; suites {suites}; tool scores {scores}"
    )
