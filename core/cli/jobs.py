"""`mirage jobs`: list, cancel and resume background jobs (each named by its id or its name)."""

from __future__ import annotations

import click

from core.cli import emit_json, json_option, open_workspace, print_table, workspace_option


@click.group("jobs", invoke_without_command=True)
@json_option
@workspace_option
@click.pass_context
def jobs_group(ctx, as_json):
    """List jobs (finetunes, generation, coverage, collection), or cancel / resume one."""
    if ctx.invoked_subcommand is not None:
        return
    from core.runtime import jobs

    ws = open_workspace(ctx)
    rows = [jobs.public_view(j) for j in jobs.list_jobs(ws)]
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no jobs in {ws.root}")
    else:
        for r in rows:
            r["progress"] = f"{r['step']}/{r['total_steps']}" if r["total_steps"] else str(r["step"] or "")
            r["loss"] = f"{r['loss']:.4f}" if r["loss"] is not None else None
        print_table(rows, ["id", "name", "kind", "status", "pid", "progress", "loss", "error"])


@jobs_group.command("cancel")
@click.argument("job", metavar="ID_OR_NAME")
@json_option
@workspace_option
@click.pass_context
def cancel(ctx, job, as_json):
    """Stop a running or queued job."""
    from core.runtime import jobs

    _act(ctx, job, as_json, jobs.cancel)


def _act(ctx, job: str, as_json: bool, act) -> None:
    """Find JOB by id or name, apply `act(ws, job_id)` (it returns the job's row), print its status."""
    from core.runtime import jobs

    ws = open_workspace(ctx)
    job_id = jobs.find_job(ws, job)["id"]
    view = jobs.public_view(act(ws, job_id))
    emit_json(view) if as_json else click.echo(f"job {job_id}: {view['status']}")


@jobs_group.command("resume")
@click.argument("job", metavar="ID_OR_NAME")
@click.option("--foreground", is_flag=True, help="Run here instead of in the background.")
@json_option
@workspace_option
@click.pass_context
def resume(ctx, job, foreground, as_json):
    """Continue an interrupted, failed or cancelled job from its last checkpoint."""
    from core.runtime import jobs

    _act(ctx, job, as_json, lambda ws, job_id: jobs.resume(ws, job_id, detach=not foreground))


@jobs_group.command("log")
@click.argument("job", metavar="ID_OR_NAME")
@click.option("--tail", type=int, default=40, show_default=True)
@json_option
@workspace_option
@click.pass_context
def log(ctx, job, tail, as_json):
    """Show a job's recorded events."""
    from core.runtime import jobs

    ws = open_workspace(ctx)
    evs = jobs.events(ws, jobs.find_job(ws, job)["id"])[-tail:]
    if as_json:
        emit_json(evs)
        return
    for e in evs:
        parts = [e["time"]]
        if e["step"] is not None:
            parts.append(f"step {e['step']}/{e['total_steps'] or '?'}")
        if e["loss"] is not None:
            parts.append(f"loss {e['loss']:.4f}")
        if (e["data"] or {}).get("eval_loss") is not None:
            parts.append(f"eval_loss {e['data']['eval_loss']:.4f}")
        if e["message"]:
            parts.append(e["message"])
        click.echo("  ".join(parts))
