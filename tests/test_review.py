"""`mirage mark` and `mirage rate`: headless marks and blind pairwise ratings, into the tables the TUI reads."""

from __future__ import annotations

import json

import pytest
from compare_data import build_study

from core.analysis import compare, marks, ratings
from core.cli import main

MODELS = ("base", "imitation", "teacher")


@pytest.fixture
def built(ws):
    return build_study(ws, n_items=12)


def mirage(capsys, ws, *args):
    with pytest.raises(SystemExit) as e:
        main([*args, "--workspace", str(ws.root)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def ok_json(capsys, ws, *args):
    code, out, err = mirage(capsys, ws, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_mark_add_ls_rm_seen_by_compare(capsys, ws, built):
    out = ok_json(capsys, ws, "mark", "add", "incorrect", "--suite", "nq", "--model", "imitation", "--item", "3",
                  "--rater", "ann")  # fmt: skip
    gid = built["gids"][("imitation", 3)]
    assert out == {"generation_id": gid, "model": "imitation", "item": 3, "mark": "incorrect", "rater": "ann"}
    ok_json(capsys, ws, "mark", "add", "correct", "--generation", str(built["gids"][("base", 5)]), "--rater", "ann")
    # The Compare screen's own read (CompareView, as the TUI opens it) sees both marks.
    view = compare.CompareView(ws, "nq", list(MODELS), rater="ann")
    assert view.row(3).panes[1].mark == "incorrect"
    assert view.row(5).panes[0].mark == "correct"
    assert compare.CompareView(ws, "nq", list(MODELS), rater="bob").row(3).panes[1].mark is None
    listed = ok_json(capsys, ws, "mark", "ls", "--suite", "nq", "--rater", "ann")
    assert [(r["model"], r["item"], r["mark"]) for r in listed] == [
        ("imitation", 3, "incorrect"),
        ("base", 5, "correct"),
    ]
    assert ok_json(capsys, ws, "mark", "ls", "--suite", "nq", "--rater", "bob") == []
    # agreement from the CLI is core's (the TUI's `i`)
    assert ok_json(capsys, ws, "mark", "agreement", "--suite", "nq", "--rater", "ann") == marks.agreement(
        ws, "nq", rater="ann"
    )
    ok_json(capsys, ws, "mark", "rm", "--suite", "nq", "--model", "imitation", "--item", "3", "--rater", "ann")
    assert compare.CompareView(ws, "nq", list(MODELS), rater="ann").row(3).panes[1].mark is None
    assert len(marks.marks(ws, "nq", rater="ann")) == 1


def test_mark_bad_target_is_one_line_error(capsys, ws, built):
    code, _, err = mirage(capsys, ws, "mark", "add", "correct", "--suite", "nq", "--model", "imitation", "--item", "99")
    assert code != 0 and "no item 99 (items 0..11)" in err and len(err.strip().splitlines()) == 1
    code, _, err = mirage(capsys, ws, "mark", "add", "correct", "--generation", "123456")
    assert code != 0 and "no generation 123456" in err
    code, _, err = mirage(capsys, ws, "mark", "add", "correct", "--suite", "nq")
    assert code != 0 and "--generation" in err
    assert ws.db.execute("select count(*) from marks").fetchone()[0] == 0


def test_rate_next_is_blind_and_stable(capsys, ws, built):
    pair = ok_json(capsys, ws, "rate", "next", "--suite", "nq", "--rater", "ann")
    text = json.dumps(pair)
    for name in MODELS:
        assert name not in text  # neither keys nor values name a model
    assert set(pair) == {"pair_id", "suite", "item", "prompt", "a", "b", "rater", "remaining"}
    assert pair["remaining"] == 24  # 12 items x (base, imitation) against the teacher
    item = pair["item"]
    assert pair["prompt"] == built["items"][item]["prompt"]
    outputs = {
        m: ws.db.execute("select output from generations where id = ?", [built["gids"][(m, item)]]).fetchone()[0]
        for m in MODELS
    }
    assert outputs["teacher"] in (pair["a"], pair["b"])
    # asked again before answering: the same pair, the same sides
    assert ok_json(capsys, ws, "rate", "next", "--suite", "nq", "--rater", "ann") == pair
    # sides vary across pairs (seeded): over all 24 the teacher is A sometimes and B sometimes
    sides = set()
    while (p := ratings.next_pair(ws, "nq", rater="ann")) is not None:
        sides.add(p["a"] == outputs_of(ws, built, p["item"], "teacher"))
        ratings.skip_pair(ws, p["pair_id"])
    assert sides == {True, False}


def outputs_of(ws, built, item, model):
    return ws.db.execute("select output from generations where id = ?", [built["gids"][(model, item)]]).fetchone()[0]


def test_rate_submit_lands_where_the_tui_reads(capsys, ws, built):
    pair = ok_json(capsys, ws, "rate", "next", "--suite", "nq", "--models", "imitation", "--rater", "ann")
    teacher_side = "A" if pair["a"] == outputs_of(ws, built, pair["item"], "teacher") else "B"
    model_side = "B" if teacher_side == "A" else "A"
    before = len(ratings.pairwise_queue(ws, "nq", "imitation", rater="ann"))
    out = ok_json(capsys, ws, "rate", "submit", pair["pair_id"], model_side.lower())
    assert out == {"pair_id": pair["pair_id"], "choice": model_side, "rater": "ann", "already_rated": False}
    # what the TUI's rating screen and agreement modal read
    res = ratings.pairwise_result(ws, "nq", "imitation", rater="ann")
    assert (res["n"], res["wins"], res["ties"], res["losses"]) == (1, 1, 0, 0)
    assert len(ratings.pairwise_queue(ws, "nq", "imitation", rater="ann")) == before - 1
    row = ws.db.execute("select item_id, choice, outcome, rater from pairwise_ratings").fetchone()
    assert row == (built["ids"][pair["item"]], model_side, "model", "ann")
    # the same verdict again: recorded once
    again = ok_json(capsys, ws, "rate", "submit", pair["pair_id"], model_side)
    assert again["already_rated"] is True
    assert ws.db.execute("select count(*) from pairwise_ratings").fetchone()[0] == 1
    # a different verdict: refused with one line, nothing changed
    code, _, err = mirage(capsys, ws, "rate", "submit", pair["pair_id"], teacher_side)
    assert code != 0 and "already rated" in err and "--replace" in err and len(err.strip().splitlines()) == 1
    assert ratings.pairwise_result(ws, "nq", "imitation", rater="ann")["wins"] == 1
    ok_json(capsys, ws, "rate", "submit", pair["pair_id"], teacher_side, "--replace")
    res = ratings.pairwise_result(ws, "nq", "imitation", rater="ann")
    assert (res["n"], res["wins"], res["losses"]) == (1, 0, 1)
    # the next pair is a new one; results are the TUI's figures
    nxt = ok_json(capsys, ws, "rate", "next", "--suite", "nq", "--models", "imitation", "--rater", "ann")
    assert nxt["pair_id"] != pair["pair_id"] and nxt["remaining"] == 11
    got = ok_json(capsys, ws, "rate", "results", "--suite", "nq", "--rater", "ann")
    assert got == ratings.results(ws, "nq", ["base", "imitation"], teacher="teacher", rater="ann")
    assert [r["model"] for r in got] == ["base", "imitation"] and got[1]["n"] == 1
    code, _, err = mirage(capsys, ws, "rate", "submit", "p-nope", "A")
    assert code != 0 and "no rating pair 'p-nope'" in err


def test_rating_in_the_tui_is_seen_by_submit(capsys, ws, built):
    """A pair rated on the Compare screen (record_rating) meanwhile is not rated twice."""
    pair = ratings.next_pair(ws, "nq", models=["imitation"], rater="ann")
    task = next(t for t in ratings.pairwise_queue(ws, "nq", "imitation", rater="ann") if t.prompt == pair["prompt"])
    ratings.record_rating(ws, task, "tie", rater="ann")
    assert ratings.next_pair(ws, "nq", models=["imitation"], rater="ann")["pair_id"] != pair["pair_id"]
    assert ratings.submit_pair(ws, pair["pair_id"], "tie")["already_rated"] is True
    assert ws.db.execute("select count(*) from pairwise_ratings").fetchone()[0] == 1


def test_interactive_rating_loop(ws, built):
    from click.testing import CliRunner

    from core.cli import cli

    r = CliRunner().invoke(
        cli,
        ["rate", "--suite", "nq", "--models", "base", "--rater", "ann", "--workspace", str(ws.root)],
        input="t\ns\nt\nq\n",
    )
    assert r.exit_code == 0, r.output
    assert "2 rated this session" in r.output
    res = ratings.pairwise_result(ws, "nq", "base", rater="ann")
    assert (res["n"], res["ties"]) == (2, 2)
    assert ws.db.execute("select count(*) from rating_pairs where status = 'skipped'").fetchone()[0] == 1
