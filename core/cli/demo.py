"""`mirage demo`: the offline end-to-end imitation study, in the TUI or headless."""

from __future__ import annotations

import time

import click

from core.cli import workspace_option, workspace_path


@click.command()
@click.option(
    "--headless", is_flag=True, help="Run without the TUI: print progress (stderr), then the report (stdout)."
)
@click.option("--quick", is_flag=True, help="A smaller but real end-to-end pass (fewer items, a few training steps).")
@click.option(
    "--samples", metavar="DIR", default=None, help="Sample folder to import (default: the repository's samples/)."
)
@workspace_option
@click.pass_context
def demo(ctx, headless, quick, samples):
    """Run the imitation study on the packaged offline models (default workspace: ./demo-workspace).

    Reruns are incremental: finished steps are reused, so `mirage demo` again only does what is missing.
    """
    from core.errors import JobError
    from core.runtime import jobs
    from core.study import job as study
    from core.study.plan import Plan
    from core.study.report import report_path

    t0 = time.monotonic()
    ws = study.prepare_workspace(workspace_path(ctx))
    plan = Plan.make(quick, samples)
    if not headless:
        job_id = study.start(ws, plan, detach=True)
        from core.cli.ui import exec_tui

        exec_tui(str(ws.root), screen="jobs", job=job_id)  # the TUI in its own interpreter

    def show(ev: dict) -> None:
        if ev.get("message"):
            click.echo(f"[{time.monotonic() - t0:6.0f} s] {ev['message']}", err=True)

    click.echo(f"demo workspace: {ws.root}", err=True)
    running = study.active_study(ws, plan)
    if running:
        raise JobError(
            f"a demo study is already running in {ws.root} (job {running['id']});"
            f" watch it with `mirage jobs` or cancel it with `mirage jobs cancel {running['id']}`"
        )
    job_id = study.start(ws, plan, detach=False, on_event=show)
    job = jobs.get_job(ws, job_id)
    if job["status"] != "done":
        raise JobError(
            f"the demo study {job['status']}"
            + (f": {job['error']}" if job.get("error") else "")
            + f"; rerun `mirage demo --headless{' --quick' if quick else ''}` to continue where it stopped"
        )
    click.echo(report_path(ws, plan).read_text(encoding="utf-8"))
    click.echo(f"done in {time.monotonic() - t0:.0f} s", err=True)
