"""The `mirage` command line: a thin layer over `core`, loading each command's module on demand."""

from __future__ import annotations

import importlib
import json
import sys

import click

from core.errors import MirageError
from core.runtime.secrets import redact

# command name -> "module:object"; loaded only when used, so `mirage ls` never imports torch.
LAZY_COMMANDS = {
    "import": "core.cli.data:import_group",
    "models": "core.cli.models:models_group",
    "serve": "core.cli.models:serve",
    "generate": "core.cli.models:generate",
    "collect": "core.cli.models:collect",
    "coverage": "core.cli.coverage:coverage",
    "subset": "core.cli.coverage:subset_group",
    "finetune": "core.cli.finetune:finetune",
    "jobs": "core.cli.jobs:jobs_group",
    "score": "core.cli.scores:score",
    "report": "core.cli.scores:report",
    "export": "core.cli.scores:export",
    "tui": "core.cli.ui:tui",
    "compare": "core.cli.ui:compare",
    "demo": "core.cli.demo:demo",
    "mark": "core.cli.review:mark_group",
    "rate": "core.cli.review:rate_group",
}


class LazyGroup(click.Group):
    """click's documented lazy-loading pattern: subcommands imported on first use."""

    def __init__(self, *args, lazy_subcommands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_subcommands))

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.lazy_subcommands:
            modname, _, attr = self.lazy_subcommands[cmd_name].partition(":")
            try:
                mod = importlib.import_module(modname)
            except ModuleNotFoundError as e:
                if e.name == modname:
                    return None  # not built yet
                raise
            return getattr(mod, attr, None)
        return super().get_command(ctx, cmd_name)


# -- the workspace option, accepted before or after the subcommand ---------------------------------
def _store_workspace(ctx: click.Context, param, value):
    if value is not None:
        ctx.meta["mirage.workspace"] = value
    return value


def workspace_option(f):
    return click.option(
        "--workspace",
        "-w",
        metavar="PATH",
        expose_value=False,
        is_eager=True,
        callback=_store_workspace,
        help="Workspace folder (default: $MIRAGE_WORKSPACE, else the current folder).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def workspace_path(ctx: click.Context | None = None) -> str | None:
    ctx = ctx or click.get_current_context()
    return ctx.meta.get("mirage.workspace")


def open_workspace(ctx: click.Context | None = None):
    from core.store.workspace import Workspace

    return Workspace.open(workspace_path(ctx))


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def print_table(rows: list[dict], columns: list[str], *, title: str | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Cells are data (model names, prompts, "[0.1, 0.3]" intervals), never Rich markup: escaped, or
    # a "[n/a]" would vanish as an unknown tag and a "[bold]" in a name would style the table.
    table = Table(title=None if title is None else escape(title), show_edge=False, header_style="bold")
    for c in columns:
        table.add_column(escape(c), overflow="fold")
    for r in rows:
        table.add_row(*["" if r.get(c) is None else escape(str(r.get(c))) for c in columns])
    Console().print(table)


# -- the group ----------------------------------------------------------------------------------------
@click.group(
    cls=LazyGroup,
    lazy_subcommands=LAZY_COMMANDS,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@workspace_option
@click.version_option(package_name="mirage", prog_name="mirage")
@click.pass_context
def cli(ctx: click.Context):
    """mirage: study what a model gains by imitating a stronger one.

    With no command, opens the TUI on the workspace.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(cli.get_command(ctx, "tui"))


@cli.command()
@click.argument("directory", required=False)
@workspace_option
@click.pass_context
def init(ctx, directory):
    """Create a workspace in DIRECTORY (default: --workspace, $MIRAGE_WORKSPACE or here)."""
    from core.store.workspace import Workspace

    ws = Workspace.init(directory or workspace_path(ctx))
    click.echo(f"workspace ready: {ws.root}")


LISTERS = {
    "datasets": ("core.data.datasets:list_datasets", ["name", "kind", "examples", "tokens", "duplicates", "source"]),
    "suites": (
        "core.data.datasets:list_suites",
        ["name", "kind", "items", "tasks", "model_count", "outputs", "source"],
    ),
    "models": ("core.models.registry:list_models", ["name", "kind", "size", "chat_template", "location"]),
    "runs": (
        "core.finetune.runs:list_runs",
        ["name", "status", "base", "data", "tokens", "step", "total_steps", "loss", "adapter"],
    ),
}


@cli.command("ls")
@click.argument("what", type=click.Choice(sorted(LISTERS)))
@json_option
@workspace_option
@click.pass_context
def ls(ctx, what, as_json):
    """List datasets, suites, models or runs."""
    ws = open_workspace(ctx)
    target, columns = LISTERS[what]
    modname, _, fn = target.partition(":")
    rows = getattr(importlib.import_module(modname), fn)(ws)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no {what} in {ws.root}")
    else:
        # An approximate count reads as one: "~1,234" (the JSON keeps the number, with tokens_approx).
        shown = [{**r, "tokens": f"~{r['tokens']:,}"} if r.get("tokens_approx") else r for r in rows]
        # A run's loss to 4 places, as `mirage jobs` shows it (the JSON keeps the full float).
        shown = [{**r, "loss": f"{r['loss']:.4f}"} if isinstance(r.get("loss"), float) else r for r in shown]
        print_table(shown, columns)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, exit codes, and a redacted crash report for the unexpected."""
    try:
        cli.main(args=argv, prog_name="mirage", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(redact(f"error: {e.format_message()}"), err=True)
        sys.exit(e.exit_code)
    except MirageError as e:
        click.echo(redact(f"error: {e.message}"), err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:
        from core.runtime.crash import write_report

        path = write_report(e, context="mirage " + " ".join(sys.argv[1:] if argv is None else argv))
        where = f" (report: {path})" if path else ""
        click.echo(redact(f"error: unexpected {type(e).__name__}: {e}{where}").splitlines()[0], err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
