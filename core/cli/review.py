"""`mirage mark` and `mirage rate`: the human checks of the Compare screen, for scripts and remote raters.

Both write the tables the TUI writes (`marks`, `pairwise_ratings`) through the same core functions
(core.analysis.marks, core.analysis.ratings); the rater is the login name unless `--rater` says.
"""

from __future__ import annotations

import click

from core.cli import emit_json, json_option, open_workspace, print_table, workspace_option


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


# One --rater for every command that writes or reads as a rater; readers add --all-raters.
_rater_option = click.option("--rater", help="Rater name (default: your login name).")


def _rater_options(f):
    f = click.option("--all-raters", is_flag=True, help="Every rater's, not only yours.")(f)
    return _rater_option(f)


def _who(rater: str | None, all_raters: bool) -> str | None:
    from core.analysis.marks import default_rater

    if all_raters:
        return None
    return rater or default_rater()


# -- marks ------------------------------------------------------------------------------------------------
@click.group("mark")
def mark_group():
    """Spot-check marks on outputs (correct / incorrect / unsure), as `y` / `x` / `u` on Compare."""


def _target_options(f):
    f = click.option("--generation", type=int, help="The output by its generation id (instead of suite/model/item).")(f)
    f = click.option("--item", type=int, help="Item index in the suite (0-based, `item` in `mark ls --json`).")(f)
    f = click.option("--model", help="Model whose output on the item to mark.")(f)
    return click.option("--suite", help="Suite of the item.")(f)


def _resolve_target(ws, suite, model, item, generation) -> tuple[int, dict]:
    from core.analysis import marks
    from core.errors import BadInput, NotFound

    if generation is not None:
        row = ws.db.execute("select model, item_id from generations where id = ?", [generation]).fetchone()
        if row is None:
            raise NotFound(f"no generation {generation}")
        idx = ws.db.execute("select idx from items where id = ?", [row[1]]).fetchone()
        return generation, {"generation_id": generation, "model": row[0], "item": idx[0] if idx else None}
    if not (suite and model and item is not None):
        raise BadInput("mark", "name the output: --suite S --model M --item N, or --generation ID")
    gid = marks.output_generation(ws, suite, model, item)
    return gid, {"generation_id": gid, "model": model, "item": item}


def _set(ctx, value, suite, model, item, generation, rater, as_json) -> None:
    from core.analysis import marks

    ws = open_workspace(ctx)
    gid, out = _resolve_target(ws, suite, model, item, generation)
    rater = _who(rater, False)
    marks.set_mark(ws, gid, value, rater=rater)
    out.update(mark=value, rater=rater)
    if as_json:
        emit_json(out)
    else:
        what = f"{out['model']} on item {out['item']}"
        click.echo(f"marked {what} {value} ({rater})" if value else f"unmarked {what} ({rater})")


@mark_group.command("add")
@click.argument("mark", type=click.Choice(["correct", "incorrect", "unsure"]))
@_target_options
@_rater_option
@json_option
@workspace_option
@click.pass_context
def mark_add(ctx, mark, suite, model, item, generation, rater, as_json):
    """Mark one output MARK (a second mark replaces the first)."""
    _set(ctx, mark, suite, model, item, generation, rater, as_json)


@mark_group.command("rm")
@_target_options
@_rater_option
@json_option
@workspace_option
@click.pass_context
def mark_rm(ctx, suite, model, item, generation, rater, as_json):
    """Remove your mark on one output."""
    _set(ctx, None, suite, model, item, generation, rater, as_json)


@mark_group.command("ls")
@click.option("--suite", required=True)
@click.option("--model", help="Only this model's outputs.")
@_rater_options
@json_option
@workspace_option
@click.pass_context
def mark_ls(ctx, suite, model, rater, all_raters, as_json):
    """List the marks on a suite's outputs."""
    from core.analysis import marks

    rows = marks.marks(open_workspace(ctx), suite, rater=_who(rater, all_raters), model=model)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no marks on {suite}")
    else:
        print_table(rows, ["item", "model", "mark", "rater", "generation_id", "updated_at"])


@mark_group.command("agreement")
@click.option("--suite", required=True)
@_rater_options
@json_option
@workspace_option
@click.pass_context
def mark_agreement(ctx, suite, rater, all_raters, as_json):
    """How often each automatic metric agrees with the marks (percent, Cohen's kappa), as `i` on Compare."""
    from core.analysis import marks

    rows = marks.agreement(open_workspace(ctx), suite, rater=_who(rater, all_raters))
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no marks on {suite} to compare with scores")
    else:
        print_table(
            [
                {
                    **r,
                    "agreement": f"{r['agreement']:.0%}",
                    "kappa": "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}",
                }
                for r in rows
            ],
            ["metric", "n", "agreement", "kappa"],
        )


# -- blind pairwise ratings ---------------------------------------------------------------------------------
def _pair_options(f):
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the item order and A/B sides.")(f)
    f = click.option("--teacher", help="Teacher (default: roles.teacher).")(f)
    f = click.option("--models", help="Comma-separated models to rate against the teacher (default: all others).")(f)
    return f


@click.group("rate", invoke_without_command=True)
@click.option("--suite", help="Rate on this suite, interactively (a terminal loop).")
@_pair_options
@_rater_option
@workspace_option
@click.pass_context
def rate_group(ctx, suite, models, teacher, seed, rater):
    """Blind pairwise rating against the teacher: which of A and B is better (sides hidden and shuffled).

    `mirage rate --suite S` rates in a loop on the terminal; `next`, `submit`, `skip` and `results`
    do the same one step at a time for scripts and remote raters.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not suite:
        raise click.UsageError("give --suite to rate interactively, or use a subcommand (next, submit, results)")
    _interactive(ctx, suite, _names(models), teacher, seed, rater)


def _show_pair(pair: dict) -> None:
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.panel import Panel

    con = Console()
    con.rule(f"item {pair['item']} · {pair['remaining']} to rate · pair {pair['pair_id']}")
    con.print(Panel(pair["prompt"], title="prompt", title_align="left"))
    con.print(Panel(Markdown(pair["a"] or ""), title="A", title_align="left"))
    con.print(Panel(Markdown(pair["b"] or ""), title="B", title_align="left"))


def _interactive(ctx, suite, models, teacher, seed, rater) -> None:
    from core.analysis import ratings

    ws = open_workspace(ctx)
    n = 0
    while True:
        pair = ratings.next_pair(ws, suite, models=models, teacher=teacher, seed=seed, rater=rater)
        if pair is None:
            click.echo("nothing left to rate")
            break
        _show_pair(pair)
        key = click.prompt(
            "better: a / b / t (tie), s skip, q quit",
            type=click.Choice(["a", "b", "t", "s", "q"], case_sensitive=False),
            show_choices=False,
        ).lower()
        if key == "q":
            break
        if key == "s":
            ratings.skip_pair(ws, pair["pair_id"])
            continue
        ratings.submit_pair(ws, pair["pair_id"], key)
        n += 1
    click.echo(f"{n} rated this session")
    _print_results(ratings.results(ws, suite, models, teacher=teacher, rater=_who(rater, False)))


@rate_group.command("next")
@click.option("--suite", required=True)
@_pair_options
@_rater_option
@json_option
@workspace_option
@click.pass_context
def rate_next(ctx, suite, models, teacher, seed, rater, as_json):
    """The next pair to rate: prompt, outputs A and B, a pair id (no model names). Asked again, the same pair."""
    from core.analysis import ratings

    pair = ratings.next_pair(open_workspace(ctx), suite, models=_names(models), teacher=teacher, seed=seed, rater=rater)
    if as_json:
        emit_json(pair)
    elif pair is None:
        click.echo("nothing left to rate")
    else:
        _show_pair(pair)
        click.echo(f"rate it: mirage rate submit {pair['pair_id']} A|B|tie")


@rate_group.command("submit")
@click.argument("pair_id")
@click.argument("choice", type=click.Choice(["A", "B", "tie"], case_sensitive=False))
@click.option("--replace", is_flag=True, help="Change a verdict already given for this pair.")
@json_option
@workspace_option
@click.pass_context
def rate_submit(ctx, pair_id, choice, replace, as_json):
    """Record CHOICE (A, B or tie) for PAIR_ID; the same verdict twice is recorded once."""
    from core.analysis import ratings

    out = ratings.submit_pair(open_workspace(ctx), pair_id, choice, replace=replace)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"pair {pair_id}: {out['choice']}" + (" (already recorded)" if out["already_rated"] else ""))


@rate_group.command("skip")
@click.argument("pair_id")
@json_option
@workspace_option
@click.pass_context
def rate_skip(ctx, pair_id, as_json):
    """Leave PAIR_ID unrated; `next` moves on."""
    from core.analysis import ratings

    out = ratings.skip_pair(open_workspace(ctx), pair_id)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"pair {pair_id} skipped")


def _print_results(rows: list[dict]) -> None:
    shown = []
    for r in rows:
        cell = dict(r)
        if r["n"]:
            cell["share"] = f"{r['share']:.0%} [{r['ci_low']:.0%}, {r['ci_high']:.0%}]"
        shown.append(cell)
    if not any(r["n"] for r in rows):
        click.echo("no blind ratings yet")
        return
    print_table(
        shown, ["model", "teacher", "share", "n", "wins", "ties", "losses"], title="rated ≥ the teacher (Wilson 95%)"
    )


@rate_group.command("results")
@click.option("--suite", required=True)
@click.option("--models", help="Comma-separated models (default: every model with outputs but the teacher).")
@click.option("--teacher", help="Teacher (default: roles.teacher).")
@_rater_options
@json_option
@workspace_option
@click.pass_context
def rate_results(ctx, suite, models, teacher, rater, all_raters, as_json):
    """Share of each model's outputs rated equal to or better than the teacher's, with a Wilson 95% interval."""
    from core.analysis import ratings

    rows = ratings.results(open_workspace(ctx), suite, _names(models), teacher=teacher, rater=_who(rater, all_raters))
    if as_json:
        emit_json(rows)
    else:
        _print_results(rows)
