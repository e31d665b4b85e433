"""`mirage tui` and `mirage compare`: open the Textual app (imported only here, never by core)."""

from __future__ import annotations

import sys

import click

from core.cli import workspace_option, workspace_path


@click.command()
@workspace_option
@click.pass_context
def tui(ctx):
    """Open the TUI on the workspace (what `mirage` with no command does)."""
    from tui.app import run

    sys.exit(run(workspace_path(ctx)))


@click.command()
@click.option("--suite", required=True, metavar="NAME", help="Suite to compare on.")
@click.option("--models", default="", metavar="A,B,...", help="Models to show side by side (default: the roles).")
@workspace_option
@click.pass_context
def compare(ctx, suite, models):
    """Open the TUI on the Compare screen for SUITE."""
    from tui.app import run

    names = [m.strip() for m in models.split(",") if m.strip()]
    sys.exit(run(workspace_path(ctx), start="compare", start_args={"suite": suite, "models": names}))
