"""core.analysis.compare: compare views (verdicts, filters, sorts, disagreements), marks, agreement, pairwise rating."""

from __future__ import annotations

import math

import numpy as np
import pytest
from compare_data import add_generation, add_suite, build_study, set_roles

from core.analysis import compare as study
from core.analysis import marks, ratings, roles, views
from core.api import metrics
from core.errors import BadInput, NotFound
from core.store.workspace import Workspace


@pytest.fixture
def built(ws):
    return build_study(ws, n_items=30)


def test_default_models_follow_roles(ws, built):
    assert roles.default_models(ws, "nq") == ["base", "imitation", "teacher"]
    view = study.CompareView(ws, "nq")
    assert view.models == ["base", "imitation", "teacher"]
    assert view.verdict_metric == "exact_match"
    assert view.n == 30


def test_default_models_without_roles_are_those_with_outputs(ws, built):
    set_roles(ws, "")
    assert roles.default_models(ws, "nq") == ["base", "imitation", "teacher"]


def test_imitation_role_from_adapter_lineage(ws, built):
    from core.store.workspace import dumps, now

    set_roles(ws, '[roles]\nteacher = "teacher"\nbase = "base"\n')
    for name, base in (("imitation", "base"), ("other-adapter", "elsewhere")):
        ws.db.execute(
            "insert into models (name, kind, spec, created_at) values (?, 'adapter', ?, ?)",
            [name, dumps({"base": base, "lineage": {"base": base, "tokens": 1000}}), now()],
        )
    assert roles.roles_of(ws) == {"imitation": "imitation", "base": "base", "teacher": "teacher"}
    view = study.CompareView(ws, "nq")
    assert view.models == ["base", "imitation", "teacher"]
    assert view.apply(study.Filters(pattern="teacher-right-imitation-wrong")) > 0


def test_unknown_model_names_what_exists(ws, built):
    with pytest.raises(NotFound, match="no outputs of gpt-9.*have: base, imitation, teacher"):
        study.CompareView(ws, "nq", ["base", "gpt-9"])


def test_verdicts_and_panes_match_scores(ws, built):
    view = study.CompareView(ws, "nq")
    truth = built["truth"]
    for pos in range(view.n):
        row = view.row(pos)
        i = row.idx
        assert row.gold == built["items"][i]["gold"]
        for pane in row.panes:
            assert pane.verdict == truth[(pane.model, i)]
            assert pane.symbol == ("✓" if truth[(pane.model, i)] else "✗")
        imitation = row.panes[1]
        assert imitation.role == "imitation" and imitation.style["unigram_overlap"] == 0.9


def test_unscored_output_has_question_mark(ws):
    set_roles(ws)
    ids = add_suite(ws, "s", [{"prompt": "p", "gold": ["x"]}])
    add_generation(ws, "teacher", ids[0], "x")
    add_generation(ws, "base", ids[0], "y")
    row = study.CompareView(ws, "s").row(0)
    assert [p.verdict_name for p in row.panes] == ["unscored", "unscored"]
    assert row.panes[0].symbol == "?"


def test_verdict_patterns(ws, built):
    view = study.CompareView(ws, "nq")
    truth = built["truth"]
    cases = {
        "teacher-right-imitation-wrong": lambda i: truth[("teacher", i)] and not truth[("imitation", i)],
        "base-right-imitation-wrong": lambda i: truth[("base", i)] and not truth[("imitation", i)],
        # imitation outputs carry unigram overlap 0.9 (convincing), base 0.2 (not)
        "convincing-but-wrong": lambda i: not truth[("imitation", i)],
        "disagree": lambda i: len({truth[(m, i)] for m in ("base", "imitation", "teacher")}) > 1,
    }
    for pattern, want in cases.items():
        n = view.apply(study.Filters(pattern=pattern))
        expected = [i for i in range(30) if want(i)]
        assert n == len(expected) > 0, pattern
        assert [view.row(p).idx for p in range(n)] == expected, pattern


def test_convincing_but_wrong_matches_core_scoring(ws):
    from core.scores import analyses

    set_roles(ws)
    ids = add_suite(ws, "s", [{"prompt": f"p{i}", "gold": ["x"]} for i in range(5)])
    # (exact_match, contains, overlap, list_when_teacher_lists) of the imitation output per item
    spec = [(0, 0, 0.9, 1), (0, 1, 0.9, 1), (0, 0, 0.1, 1), (1, 1, 0.9, 1), (0, 0, 0.9, 0)]
    for i, (em, ct, ov, ls) in enumerate(spec):
        add_generation(ws, "teacher", ids[i], "- teacher list", {"exact_match": 1, "contains": 1})
        add_generation(
            ws,
            "imitation",
            ids[i],
            "imitation",
            {"exact_match": em, "contains": ct, "unigram_overlap": ov, "list_when_teacher_lists": ls},
        )
    view = study.CompareView(ws, "s")
    view.apply(study.Filters(pattern="convincing-but-wrong"))
    mine = {view.row(p).item_id for p in range(len(view.order))}
    theirs = {r["item_id"] for r in analyses.convincing_but_wrong(ws, "s")}
    assert mine == theirs == {ids[0]}


def test_task_and_text_filters_combine(ws, built):
    view = study.CompareView(ws, "nq")
    n = view.apply(study.Filters(task="history"))
    assert n == 10 and {view.row(p).task for p in range(n)} == {"history"}
    n = view.apply(study.Filters(task="history", text="QUESTION 1"))
    # history items are 1, 4, 7, 10, 13, ...; "question 1" matches 1, 10, 13, 16, 19
    assert [view.row(p).idx for p in range(n)] == [1, 10, 13, 16, 19]
    assert view.apply(study.Filters(text="no such words anywhere")) == 0
    assert view.next_disagreement(0) is None


def test_pattern_needs_roles(ws, built):
    set_roles(ws, "")
    view = study.CompareView(ws, "nq")
    with pytest.raises(BadInput, match="needs a teacher and an imitation model"):
        view.apply(study.Filters(pattern="teacher-right-imitation-wrong"))


def test_sort_by_style_puts_convincing_first(ws):
    set_roles(ws)
    ids = add_suite(ws, "s", [{"prompt": f"p{i}", "gold": ["x"]} for i in range(3)])
    for i, sim in enumerate([0.1, 0.8, 0.5]):
        add_generation(ws, "teacher", ids[i], "the teacher text")
        add_generation(ws, "imitation", ids[i], "imitation", {"unigram_overlap": sim})
    view = study.CompareView(ws, "s")
    view.apply(study.Filters(sort="style"))
    assert [view.row(p).idx for p in range(3)] == [1, 2, 0]


def test_style_similarity_falls_back_to_computed_overlap(ws):
    set_roles(ws)
    ids = add_suite(ws, "s", [{"prompt": "p", "gold": ["x"]}])
    add_generation(ws, "teacher", ids[0], "alpha beta gamma delta")
    add_generation(ws, "imitation", ids[0], "alpha beta zeta")
    row = study.CompareView(ws, "s").row(0)
    assert [p.model for p in row.panes] == ["imitation", "teacher"]
    got = row.panes[0].style["unigram_overlap"]
    assert got == pytest.approx(metrics.unigram_overlap("alpha beta zeta", "alpha beta gamma delta"))
    assert 0.4 < got < 0.6  # 2 of the teacher's 4 words (share 0.5; ROUGE-1 F 0.57)
    assert "unigram_overlap" not in row.panes[1].style


def test_next_disagreement_wraps(ws, built):
    view = study.CompareView(ws, "nq")
    dis = [i for i in range(30) if len({built["truth"][(m, i)] for m in ("base", "imitation", "teacher")}) > 1]
    assert view.next_disagreement(-1) == dis[0]
    assert view.next_disagreement(dis[0]) == dis[1]
    assert view.next_disagreement(dis[-1]) == dis[0]
    assert view.next_disagreement(dis[1], step=-1) == dis[0]


def test_gold_spans():
    assert study.gold_spans("Paris. paris! Parisian", ["Paris"]) == [(0, 5), (7, 12)]
    assert study.gold_spans("New York City", ["New York", "York City"]) == [(0, 13)]
    assert study.gold_spans("anything", []) == []


def test_marks_persist_across_reopen(ws, built, tmp_path):
    view = study.CompareView(ws, "nq", rater="ann")
    view.mark(0, 1, "incorrect")
    view.mark(2, 0, "unsure")
    view.mark(0, 1, "correct")  # a second mark replaces the first
    gid = built["gids"][("imitation", 0)]
    ws.close()
    ws2 = Workspace.open(ws.root)
    again = study.CompareView(ws2, "nq", rater="ann")
    assert again.row(0).panes[1].mark == "correct"
    assert again.row(2).panes[0].mark == "unsure"
    assert again.row(1).panes[0].mark is None
    assert [m["generation_id"] for m in marks.marks(ws2, "nq")] == [gid, built["gids"][("base", 2)]]
    # another rater's marks are kept apart
    assert study.CompareView(ws2, "nq", rater="bob").row(0).panes[1].mark is None
    again.mark(0, 1, None)
    assert study.CompareView(ws2, "nq", rater="ann").row(0).panes[1].mark is None
    # marks never touch the automatic scores
    assert ws2.db.execute("select count(*) from scores where generation_id = ?", [gid]).fetchone()[0] == 3
    ws2.close()


def test_bad_mark_is_rejected(ws, built):
    with pytest.raises(BadInput, match="unknown mark 'maybe'"):
        marks.set_mark(ws, built["gids"][("base", 0)], "maybe")


def test_cohen_kappa_known_values():
    # The textbook example: 50 items, raters agree yes 20, no 15, disagree 10 + 5 -> kappa 0.4
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert marks.cohen_kappa(a, b) == pytest.approx(0.4)
    assert marks.cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert marks.cohen_kappa([1, 1], [1, 1]) is None  # chance agreement is total: undefined
    assert marks.cohen_kappa([], []) is None


def test_agreement_between_marks_and_metrics(ws):
    set_roles(ws)
    ids = add_suite(ws, "s", [{"prompt": f"p{i}", "gold": ["x"]} for i in range(4)])
    # exact_match says 1,1,0,0; contains says 1,1,1,0; human says correct,incorrect,incorrect,incorrect
    spec = [(1, 1, "correct"), (1, 1, "incorrect"), (0, 1, "incorrect"), (0, 0, "incorrect")]
    for i, (em, ct, mark) in enumerate(spec):
        gid = add_generation(ws, "imitation", ids[i], "x", {"exact_match": em, "contains": ct})
        marks.set_mark(ws, gid, mark, rater="ann")
    gid = add_generation(ws, "base", ids[0], "y", {"exact_match": 0})
    marks.set_mark(ws, gid, "unsure", rater="ann")  # unsure marks are left out
    rows = {r["metric"]: r for r in marks.agreement(ws, "s", rater="ann")}
    assert rows["exact_match"]["n"] == 4 and rows["exact_match"]["agreement"] == pytest.approx(0.75)
    # human 1,0,0,0 vs em 1,1,0,0: po .75, pe = .25*.5 + .75*.5 = .5 -> kappa .5
    assert rows["exact_match"]["kappa"] == pytest.approx(0.5)
    assert rows["contains"]["agreement"] == pytest.approx(0.5)
    # human 1,0,0,0 vs contains 1,1,1,0: pe = .25*.75 + .75*.25 = .375 -> (.5-.375)/.625 = .2
    assert rows["contains"]["kappa"] == pytest.approx(0.2)


def test_wilson_interval_known_value():
    lo, hi = ratings.wilson_interval(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    assert ratings.wilson_interval(0, 10)[0] == 0.0


def test_pairwise_blind_order_and_share(ws, built):
    queue = ratings.pairwise_queue(ws, "nq", "imitation", seed=7, rater="ann")
    assert len(queue) == 30
    again = ratings.pairwise_queue(ws, "nq", "imitation", seed=7, rater="ann")
    assert [(t.item_id, t.a_is_teacher) for t in queue] == [(t.item_id, t.a_is_teacher) for t in again]
    assert {t.a_is_teacher for t in queue} == {True, False}  # both sides occur
    teacher_text = {t.item_id: (t.a if t.a_is_teacher else t.b) for t in queue}
    for t in queue:
        assert teacher_text[t.item_id].startswith("Sure! Here is the answer.")
    # Rate 21 of 30 as model >= teacher: 14 model wins (picking the model's side), 7 ties, 9 teacher.
    for n, t in enumerate(queue):
        if n < 14:
            choice = "B" if t.a_is_teacher else "A"
        elif n < 21:
            choice = "tie"
        else:
            choice = "A" if t.a_is_teacher else "B"
        ratings.record_rating(ws, t, choice, rater="ann")
    res = ratings.pairwise_result(ws, "nq", "imitation", rater="ann")
    assert (res["wins"], res["ties"], res["losses"], res["n"]) == (14, 7, 9, 30)
    assert res["share"] == pytest.approx(0.7)
    lo, hi = ratings.wilson_interval(21, 30)
    assert (res["ci_low"], res["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert lo < 0.7 < hi
    assert ratings.pairwise_queue(ws, "nq", "imitation", seed=7, rater="ann") == []
    # the recorded side is what the rater saw
    row = ws.db.execute(
        "select a_is_teacher, seed from pairwise_ratings where item_id = ?", [queue[0].item_id]
    ).fetchone()
    assert row == (int(queue[0].a_is_teacher), 7)


def test_pairwise_against_itself_is_refused(ws, built):
    with pytest.raises(BadInput, match="is the teacher"):
        ratings.pairwise_queue(ws, "nq", "teacher")
    assert math.isnan(ratings.wilson_interval(0, 0)[0])


def test_analysis_views_export(ws, built):
    import json

    gid = built["gids"][("imitation", 0)]
    marks.set_mark(ws, gid, "correct", rater="ann")
    rep = views.analysis(ws, "nq", rater="ann")
    assert rep["teacher"] == "teacher" and rep["base"] == "base" and rep["imitation"] == ["imitation"]
    md = views.export_view(rep, "table1", "md")
    em = {r["model"]: r["value"] for r in rep["table1"] if r["metric"] == "exact_match" and r["task"] == "all"}
    truth = built["truth"]
    for model in ("base", "imitation", "teacher"):
        assert em[model] == pytest.approx(sum(truth[(model, i)] for i in range(30)) / 30)
    assert f"| teacher | all | {em['teacher'] * 100:.1f} [" in md
    human = json.loads(views.export_view(rep, "human", "json"))
    assert human["human"]["agreement"][0]["n"] == 1
    gap = json.loads(views.export_view(rep, "gap", "json"))
    assert {g["task"] for g in gap["gap_closed"]} == {"all", "geography", "history", "science"}
    path = views.save_export(ws, rep, "table2", "md")
    assert path.endswith("nq-table2.md") and "unigram_overlap" in open(path).read()
    with pytest.raises(BadInput, match="unknown view"):
        views.export_view(rep, "nope")


def test_coverage_support_sort_and_neighbours(ws, built):
    """Real coverage (the packaged MiniLM) feeds the support sort and the nearest-examples list."""
    from compare_data import ANSWERS

    from core.coverage import compute as coverage
    from core.runtime import progress
    from core.store.workspace import dumps, now

    # Imitation data that covers questions 0-4 almost word for word, and nothing else.
    with ws.transaction():
        did = ws.db.execute(
            "insert into datasets (name, kind, status, created_at) values ('imit', 'imitation', 'ready', ?)", [now()]
        ).lastrowid
        for i in range(5):
            q = f"Question {i}: which capital is answer number {i % len(ANSWERS)}?"
            conv = [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWERS[i]}]
            ws.db.execute(
                "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
                " n_tokens, content_hash) values (?,?,?,?,?,?,?,?)",
                [did, i, "synth", dumps(conv), q, ANSWERS[i], 10, f"h{i}"],
            )
        for i, q in enumerate(["How do I bake bread?", "Write a poem about the sea.", "Sort a list in Python."]):
            conv = [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]
            ws.db.execute(
                "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
                " n_tokens, content_hash) values (?,?,?,?,?,?,?,?)",
                [did, 5 + i, "chat", dumps(conv), q, "ok", 5, f"c{i}"],
            )
    progress.run(coverage.compute(ws, "imit", "nq"))
    view = study.open_view(ws, "nq")
    assert view.data == "imit" and not np.isnan(view.support).any()
    view.apply(study.Filters(sort="support"))
    order = [view.row(p).idx for p in range(view.n)]
    supports = [view.row(p).support for p in range(view.n)]
    assert supports == sorted(supports)  # least supported first
    assert 0 in order[-5:]  # a covered question ranks among the best supported
    pos = order.index(0)
    nbs = view.neighbours(pos)
    assert nbs and nbs[0]["text"].startswith("Question 0:") and nbs[0]["similarity"] > 0.9
