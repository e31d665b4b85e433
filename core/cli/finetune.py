"""`mirage finetune`: start LoRA finetune jobs (one per token budget), or estimate one with --dry-run."""

from __future__ import annotations

import click

from core.cli import emit_json, json_option, open_workspace, workspace_option
from core.runtime.progress import format_duration as _duration


def _print_event(ev: dict) -> None:
    """A foreground run's progress, one line per event (throttled by the caller)."""
    parts = []
    if ev.get("step") is not None and ev.get("loss") is not None:
        parts.append(f"step {ev['step']}/{ev.get('total_steps') or '?'}")
        parts.append(f"loss {ev['loss']:.4f}")
        if ev.get("tokens_per_s"):
            parts.append(f"{ev['tokens_per_s']:.0f} tok/s")
        if ev.get("eta_s") is not None:
            parts.append(f"eta {_duration(ev['eta_s'])}")
    if ev.get("message"):
        parts.append(ev["message"])
    if parts:
        click.echo("  ".join(parts), err=True)


@click.command("finetune")
@click.option("--base", required=True, help="Base model: a registered name or a Hugging Face folder.")
@click.option("--data", required=True, help="Dataset or coverage subset to train on.")
@click.option("--tokens", help="Token budget(s), e.g. 300k or 300k,1.5M,3M (a sweep: one run each). Default: all.")
@click.option("--name", help="Run (and adapter model) name. Default: BASE-DATA-BUDGET.")
@click.option("--save-every", type=int, help="Checkpoint every N optimizer steps.  [default: 50]")
@click.option("--detach", is_flag=True, help="Run in the background (see `mirage jobs`).")
@click.option(
    "--dry-run", is_flag=True, help="Print examples, tokens, steps and a time estimate from one measured step."
)
@click.option(
    "--no-start", is_flag=True, help="Only queue the job (to run it with `accelerate launch -m core.finetune WS ID`)."
)
@click.option("--rank", type=int, help="LoRA rank.  [default: 8]")
@click.option("--alpha", type=int, help="LoRA alpha.  [default: 16]")
@click.option("--dropout", type=float, help="LoRA dropout.  [default: 0.05]")
@click.option("--target-modules", help="Comma-separated module names, or all-linear.  [default: q_proj,v_proj]")
@click.option("--lr", type=float, help="Peak learning rate.  [default: 2e-4]")
@click.option(
    "--scheduler",
    type=click.Choice(["cosine", "linear", "constant_with_warmup"]),
    help="Learning-rate schedule (with 3% warmup).  [default: cosine]",
)
@click.option("--epochs", type=int, help="Passes over the selected data.  [default: 1]")
@click.option("--batch-size", type=int, help="Examples per micro-batch.  [default: 4]")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step.  [default: 1]")
@click.option("--max-length", type=int, help="Tokens per example (longer ones are truncated).  [default: 512]")
@click.option("--seed", type=int, help="Seed of the data shuffle, the LoRA init and dropout.  [default: 0]")
@click.option("--max-steps", type=int, help="Stop after N optimizer steps (overrides --epochs).")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bf16", "fp32", "fp16"]),
    help="Weights dtype; auto = bf16 where supported.  [default: auto]",
)
@click.option(
    "--template",
    type=click.Choice(["auto", "base", "default"]),
    help="Chat template: the base's (chat models), or mirage's default (### User: / ### Assistant:).  [default: auto]",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=None,
    help="Recompute activations in the backward pass: less memory, ~1/3 more compute.  [default: off]",
)
@json_option
@workspace_option
@click.pass_context
def finetune(ctx, base, data, tokens, name, detach, dry_run, no_start, as_json, **overrides):
    """LoRA-finetune BASE on DATA (assistant tokens only); one job per token budget, queued in lane 'train'."""
    from core.finetune import trainer as ft

    ws = open_workspace(ctx)
    budgets = ft.parse_tokens(tokens)
    if dry_run:
        results = []
        for b in budgets:
            cfg = ft.make_config(base, data, tokens=b, name=name, **overrides)
            ft.validate(ws, cfg)
            results.append(ft.dry_run(ws, cfg))
        if as_json:
            emit_json(results if len(results) > 1 else results[0])
            return
        for r in results:
            click.echo(
                f"budget {ft.human_tokens(r['budget'])}: {r['examples']} of {r['available_examples']} examples,"
                f" {r['tokens']:,} tokens ({r['label_tokens']:,} trained), {r['total_steps']} steps"
            )
            for note in r["notes"]:
                click.echo(f"  note: {note}")
            click.echo(
                f"  template {r['template']}, {r['device']} {r['dtype']}, data fingerprint {r['fingerprint'][:12]}"
            )
            click.echo(
                f"  one step: {r['step_seconds']:.2f} s ({r['step_tokens'] / r['step_seconds']:.0f} tokens/s),"
                f" loss {r['first_loss']:.4f}; estimated time {_duration(r['estimated_seconds'])}"
            )
            click.echo("  example (trained part after '>>>'):")
            click.echo("    " + r["sample"][:400].replace("\n", "\n    "))
            click.echo("    >>> " + r["sample_trained"][:300].replace("\n", "\n    >>> "))
        return

    last = {"t": 0.0}

    def on_event(ev: dict) -> None:
        import time

        # Every message; step lines at most every 2 s so a fast run does not flood the terminal.
        if ev.get("message") or time.monotonic() - last["t"] > 2 or ev.get("step") == ev.get("total_steps"):
            last["t"] = time.monotonic()
            _print_event(ev)

    if not as_json:
        for note in ft.budget_notes(ws, data, budgets):
            click.echo(f"note: {note}", err=True)
    ids = ft.submit(
        ws,
        base,
        data,
        tokens=budgets,
        name=name,
        detach=detach,
        start=not no_start,
        on_event=None if as_json else on_event,
        **overrides,
    )
    from core.runtime import jobs

    rows = [jobs.public_view(jobs.get_job(ws, i)) for i in ids]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        if no_start:
            click.echo(
                f"job {r['id']} ({r['name']}) queued, not started: accelerate launch -m core.finetune {ws.root} {r['id']}"
            )
        elif detach:
            click.echo(f"job {r['id']} ({r['name']}) started in the background: `mirage jobs` to watch it")
        else:
            extra = f": {r['error']}" if r.get("error") else ""
            click.echo(f"job {r['id']} ({r['name']}): {r['status']}{extra}")
    if not detach and not no_start and any(r["status"] != "done" for r in rows):
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            from core.errors import JobError

            raise JobError(f"job {failed[0]['id']} failed: {failed[0]['error']}")
