"""`mirage tui` and `mirage compare`: open the Textual app in its own interpreter (core never imports it)."""

from __future__ import annotations

import os
import sys

import click

from core.cli import workspace_option, workspace_path


def exec_tui(workspace: str | None, *, screen: str = "data", **args: str) -> None:
    """Replace this process with `python -m tui ...`.

    core stays headless (no Textual import anywhere in it): the CLI hands over to the TUI's own
    entry point, the same one `textual serve "python -m tui"` runs.
    """
    argv = [sys.executable, "-m", "tui", "--screen", screen]
    if workspace:
        argv += ["--workspace", str(workspace)]
    for key, value in args.items():
        if value not in (None, ""):
            argv += [f"--{key.replace('_', '-')}", str(value)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@click.command()
@workspace_option
@click.pass_context
def tui(ctx):
    """Open the TUI on the workspace (what `mirage` with no command does)."""
    exec_tui(workspace_path(ctx))


@click.command()
@click.option("--suite", required=True, metavar="NAME", help="Suite to compare on.")
@click.option("--models", default="", metavar="A,B,...", help="Models to show side by side (default: the roles).")
@workspace_option
@click.pass_context
def compare(ctx, suite, models):
    """Open the TUI on the Compare screen for SUITE."""
    names = ",".join(m.strip() for m in models.split(",") if m.strip())
    exec_tui(workspace_path(ctx), screen="compare", suite=suite, models=names)
