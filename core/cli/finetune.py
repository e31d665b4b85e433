"""`mirage finetune`: start LoRA finetune jobs (one per token budget), or estimate one with --dry-run."""

from __future__ import annotations

import time

import click

from core.cli import emit_json, json_option, open_workspace, workspace_option
from core.finetune.config import FinetuneConfig, default_text, field_type, user_fields
from core.runtime.progress import format_duration as _duration


def _print_event(ev: dict) -> None:
    """A foreground run's progress, one line per event (throttled by the caller)."""
    parts = []
    if ev.get("step") is not None and ev.get("loss") is not None:
        parts.append(f"step {ev['step']}/{ev.get('total_steps') or '?'}")
        parts.append(f"loss {ev['loss']:.4f}")
        if (ev.get("data") or {}).get("eval_loss") is not None:
            parts.append(f"eval_loss {ev['data']['eval_loss']:.4f}")
        if ev.get("tokens_per_s"):
            parts.append(f"{ev['tokens_per_s']:.0f} tok/s")
        if ev.get("eta_s") is not None:
            parts.append(f"eta {_duration(ev['eta_s'])}")
    if ev.get("message"):
        parts.append(ev["message"])
    if parts:
        click.echo("  ".join(parts), err=True)


def config_options(fn):
    """Add one option per FinetuneConfig field (name, type, choices, help with its default).

    Every option defaults to None, meaning "not given": make_config then applies the field's default,
    so a stored job config and the help text read the same defaults.
    """
    for f in reversed(user_fields()):
        flag = "--" + f.name.replace("_", "-")
        shown = default_text(f)
        help_text = f.metadata["help"] + (f"  [default: {shown}]" if shown is not None else "")
        kind = field_type(FinetuneConfig, f.name)
        if kind is bool:
            decl, extra = f"{flag}/--no-{flag[2:]}", {}
        elif "choices" in f.metadata:
            decl, extra = flag, {"type": click.Choice(list(f.metadata["choices"]))}
        else:
            decl, extra = flag, {"type": kind}
        fn = click.option(decl, f.name, default=None, help=help_text, **extra)(fn)
    return fn


@click.command("finetune")
@click.option("--base", required=True, help="Base model: a registered name or a Hugging Face folder.")
@click.option("--data", required=True, help="Dataset or coverage subset to train on.")
@click.option("--tokens", help="Token budget(s), e.g. 300k or 300k,1.5M,3M (a sweep: one run each). Default: all.")
@click.option("--name", help="Run (and adapter model) name. Default: BASE-DATA-BUDGET.")
@click.option("--detach", is_flag=True, help="Run in the background (see `mirage jobs`).")
@click.option(
    "--dry-run", is_flag=True, help="Print examples, tokens, steps and a time estimate from one measured step."
)
@click.option(
    "--no-start", is_flag=True, help="Only queue the job (to run it with `accelerate launch -m core.finetune WS ID`)."
)
@config_options
@json_option
@workspace_option
@click.pass_context
def finetune(ctx, base, data, tokens, name, detach, dry_run, no_start, as_json, **overrides):
    """LoRA-finetune BASE on DATA (assistant tokens only); one job per token budget, queued in lane 'train'."""
    from core.finetune import config, runs

    ws = open_workspace(ctx)
    budgets = config.parse_tokens(tokens)
    if dry_run:
        results = []
        for b in budgets:
            cfg = config.make_config(base, data, tokens=b, name=name, **overrides)
            runs.validate(ws, cfg)
            results.append(runs.dry_run(ws, cfg))
        if as_json:
            emit_json(results if len(results) > 1 else results[0])
            return
        for r in results:
            click.echo(
                f"budget {config.human_tokens(r['budget'])}: {r['examples']} of {r['available_examples']} examples,"
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
        if (ev.get("data") or {}).get("note") == "budget":
            return  # printed above, before the run started; the job records it for `mirage jobs log`
        # Every message; step lines at most every 2 s so a fast run does not flood the terminal.
        if ev.get("message") or time.monotonic() - last["t"] > 2 or ev.get("step") == ev.get("total_steps"):
            last["t"] = time.monotonic()
            _print_event(ev)

    # With --detach the job records these notes itself (`mirage jobs log`): counting by the base's
    # tokenizer may first convert the base (25-60 s), and --detach must return at once.
    if not as_json and not detach:
        for note in runs.budget_notes(
            ws, data, budgets, base=base, template=overrides.get("template"), max_length=overrides.get("max_length")
        ):
            click.echo(f"note: {note}", err=True)
    ids = runs.submit(
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
