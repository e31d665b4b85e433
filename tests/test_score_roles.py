"""The numbers a user reads: which teacher, base and decoding a score is about, gap closed when the
teacher is below the base, Table 2 without all-zero columns, no interval from one value, `ls
suites` counts, the `score` table at 80 columns, and the aggregate cache (issue #16)."""

from __future__ import annotations

import hashlib
import json

import pytest
from test_scoring import BASE, IMIT, QA_ITEMS, TEACHER, _rec, add_outputs, add_suite, run_cli

from core.analysis import report
from core.api.metrics import unigram_overlap
from core.runtime import progress
from core.scores import aggregate, cache, scoring, stats
from core.store.workspace import dumps, now

# A second possible teacher, with outputs unlike the first's: style numbers against it differ.
OTHER = ["Paris, France", "Tokyo, Japan", "Sydney I think", "Marlowe", "Goethe wrote Faust", "Cervantes"]


@pytest.fixture
def qa_ws(ws):
    add_suite(ws, "qa", "qa", QA_ITEMS)
    add_outputs(ws, "teacher", "qa", TEACHER)
    add_outputs(ws, "other", "qa", OTHER)
    add_outputs(ws, "base", "qa", BASE)
    add_outputs(ws, "imit", "qa", IMIT, kind="adapter", spec={"lineage": {"base": "base", "tokens": 1000}})
    return ws


def test_score_teacher_is_recorded_and_the_report_shows_it(qa_ws):
    # No [roles] in the config: the teacher exists only on the command line of `score`.
    run_cli(qa_ws, "score", "--suite", "qa", "--teacher", "teacher", "--base", "base", "--json")
    md = run_cli(qa_ws, "report", "--suite", "qa")
    assert "Teacher: teacher." in md and "Base: base." in md
    assert "Table 2 — style against the teacher (teacher)" in md
    rep = json.loads(run_cli(qa_ws, "report", "--suite", "qa", "--format", "json"))
    assert rep["teacher"] == "teacher" and rep["base"] == "base"
    assert "length_correlation" in rep["table2_metrics"]
    assert any(r["metric"] == "length_correlation" and r["model"] == "imit" for r in rep["table2"])
    assert {g["teacher_model"] for g in rep["gap_closed"]} == {"teacher"}
    # a later `score` without --teacher keeps the recorded one
    again = progress.run(scoring.score_suite(qa_ws, "qa"))
    assert again["teacher"] == "teacher" and again["computed"] == 0


def test_scores_against_two_teachers_never_mix(qa_ws):
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="other"))
    models = ["base", "imit"]
    for teacher, outs in (("teacher", TEACHER), ("other", OTHER)):
        recs = aggregate.aggregate(qa_ws, "qa", models=models, teacher=teacher, n_boot=200)
        uo = _rec(recs, "imit", "all", "unigram_overlap")
        assert uo["value"] == pytest.approx(sum(unigram_overlap(s, t) for s, t in zip(IMIT, outs)) / 6)
        assert uo["n"] == 6  # one row per item: the other teacher's rows are not read
    # both teachers' rows are kept (rescoring against one does not destroy the other)
    rows = qa_ws.db.execute(
        "select teacher, count(*) from scores where metric = 'unigram_overlap' group by teacher order by teacher"
    ).fetchall()
    assert rows == [("other", 3 * 6), ("teacher", 3 * 6)]
    # the report reads the teacher it names, and its numbers are against that teacher only
    rep = report.build(qa_ws, "qa", teacher="teacher")
    uo = next(r for r in rep["table2"] if (r["model"], r["metric"]) == ("imit", "unigram_overlap"))
    assert uo["value"] == pytest.approx(sum(unigram_overlap(s, t) for s, t in zip(IMIT, TEACHER)) / 6)
    # without one named, the teacher is the one the suite was last scored with, and only its rows
    last = aggregate.aggregate(qa_ws, "qa", models=models, n_boot=200)
    assert last == aggregate.aggregate(qa_ws, "qa", models=models + ["other"], teacher="other", n_boot=200)


def _add_decoded(ws, model, outputs, decoding):
    ids = [r[0] for r in ws.db.execute("select id from items order by idx")]
    with ws.transaction():
        for item_id, out in zip(ids, outputs):
            key = hashlib.sha256(f"{model}/{item_id}/{dumps(decoding)}".encode()).hexdigest()
            ws.db.execute(
                "insert into generations (model, fingerprint, item_id, prompt, decoding, cache_key, output, created_at)"
                " values (?, 'fp', ?, '', ?, ?, ?, ?)",
                [model, item_id, dumps(decoding), key, out, now()],
            )


def test_decodings_are_never_mixed(ws):
    add_suite(ws, "qa", "qa", QA_ITEMS)
    add_outputs(ws, "teacher", "qa", TEACHER)
    greedy = {"max_new_tokens": 32, "temperature": 0.0}
    sampled = {"max_new_tokens": 32, "temperature": 0.7, "seed": 0}
    _add_decoded(ws, "m", [i["gold"][0] for i in QA_ITEMS], greedy)  # all 6 right
    _add_decoded(ws, "m", ["wrong"] * 3, sampled)  # newer, on 3 items only, all wrong
    progress.run(scoring.score_suite(ws, "qa", teacher="teacher"))
    recs = aggregate.aggregate(ws, "qa", teacher="teacher", n_boot=200)
    em = _rec(recs, "m", "all", "exact_match")
    # the latest decoding only: 3 items, none right (a mix would be 3 wrong + 3 right of 6)
    assert (em["value"], em["n"]) == (0.0, 3)
    out = json.loads(run_cli(ws, "score", "--suite", "qa", "--decoding", "temperature=0.0", "--json"))
    em = _rec(out, "m", "all", "exact_match")
    assert (em["value"], em["n"]) == (1.0, 6)
    rep = report.build(ws, "qa", decoding={"temperature": 0.0})
    assert rep["decodings"]["m"] == greedy and rep["decodings"]["teacher"] == {}
    assert "temperature=0.0" in report.render_md(rep)
    text = run_cli(ws, "score", "--suite", "qa")
    assert "m: decoding" in text and "temperature=0.7" in text


def test_gap_closed_when_the_teacher_is_below_the_base():
    base = [1.0] * 40 + [0.0] * 10  # 0.8
    teacher = [1.0] * 10 + [0.0] * 40  # 0.2
    imitation = [1.0] * 25 + [0.0] * 25  # 0.5: moved toward the weaker teacher
    g = stats.gap_closed(base, imitation, teacher, n_boot=500)
    # (0.5 − 0.8) / (0.2 − 0.8) = 0.5 would read as half the gap closed: n/a instead
    assert g["value"] is None and g["teacher_below_base"] is True
    assert "weaker teacher" in g["reason"] and g["imitation_minus_base"] == pytest.approx(-0.3)
    row = report._gap_rows(
        {"gap_closed": [{**g, "imitation_model": "imit", "task": "all", "metric": "exact_match", "support": None}]}
    )[1][0]
    # A short cell (the explanation is the section's note, once): 80 columns wrapped the long one.
    assert row[6] == "n/a, Δ -30.0"
    # a teacher above the base still gets its ratio
    up = stats.gap_closed(teacher, imitation, base, n_boot=500)
    assert up["value"] == pytest.approx((0.5 - 0.2) / (0.8 - 0.2))


def test_table2_leaves_out_style_columns_zero_for_every_model(qa_ws):
    # Short answers: nobody, the teacher included, uses a list or ends with a summary.
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    rep = report.build(qa_ws, "qa", teacher="teacher")
    assert {"uses_list", "ends_with_summary", "markdown_structure"} <= set(rep["table2_left_out"])
    assert not {r["metric"] for r in rep["table2"]} & set(rep["table2_left_out"])
    assert "uses_list" not in rep["table2_metrics"] and "unigram_overlap" in rep["table2_metrics"]
    assert "Left out, 0 for every model: " in report.render_md(rep)
    # once one model does use a list, the column is back
    add_outputs(qa_ws, "imit", "qa", ["- Paris\n- Lyon\n- Nice"])
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    rep = report.build(qa_ws, "qa", teacher="teacher")
    assert "uses_list" in rep["table2_metrics"] and "uses_list" not in rep["table2_left_out"]


def test_an_interval_from_one_value_is_na(ws):
    items = [*QA_ITEMS[:3], {"prompt": "Who wrote Hamlet?", "gold": ["Shakespeare"], "task": "single"}]
    add_suite(ws, "qa", "qa", items)
    add_outputs(ws, "m", "qa", ["Paris", "Tokyo", "Sydney", "Shakespeare"])
    out = json.loads(run_cli(ws, "score", "--suite", "qa", "--json"))
    one = _rec(out, "m", "single", "exact_match")
    assert (one["value"], one["n"], one["ci_low"], one["ci_high"]) == (1.0, 1, None, None)
    text = run_cli(ws, "score", "--suite", "qa")
    single = text[text.index("task: single") :]
    assert "[0.0, 0.0]" not in single and "[100.0, 100.0]" not in single and "[n/a]" in single
    md = run_cli(ws, "report", "--suite", "qa")
    assert "| m | single | 100.0 [n/a] (n=1)" in md
    assert report.fmt("exact_match", 1.0, None, None, n=1) == "100.0 [n/a]"


def test_ls_suites_counts_outputs(qa_ws):
    add_outputs(qa_ws, "late", "qa", ["Paris", None, "Canberra"])
    row = next(r for r in json.loads(run_cli(qa_ws, "ls", "suites", "--json")) if r["name"] == "qa")
    assert row["outputs"] == 4 * 6 + 2 and row["model_count"] == 5 and len(row["models"]) == 5


def test_score_table_reads_at_80_columns_with_18_models(ws):
    add_suite(ws, "qa", "qa", QA_ITEMS)
    names = [f"imitation-run-{k:02d}" for k in range(17)]
    add_outputs(ws, "teacher", "qa", TEACHER)
    for name in names:
        add_outputs(ws, name, "qa", IMIT)
    text = run_cli(ws, "score", "--suite", "qa", "--teacher", "teacher")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in [*names, "teacher"]:  # whole, not folded to one character a line
        assert any(name in line for line in lines), name
    for metric in ("exact_match", "unigram_overlap", "length_correlation"):
        assert any(metric in line for line in lines), metric
    assert any("[" in line and "]" in line and "%" not in line for line in lines if "exact_match" in line)


def test_aggregate_cache_equals_recomputed_and_follows_score_changes(qa_ws, monkeypatch):
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    first = aggregate.aggregate(qa_ws, "qa", teacher="teacher", n_boot=300)
    assert qa_ws.db.execute("select count(*) from aggregate_cache").fetchone()[0] >= 1
    fresh = aggregate.aggregate(qa_ws, "qa", teacher="teacher", n_boot=300, use_cache=False)
    assert first == fresh

    # a hit computes nothing: with the bootstrap broken, the cached records still come back
    def broken(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(stats, "mean_cis", broken)
    assert aggregate.aggregate(qa_ws, "qa", teacher="teacher", n_boot=300) == first
    monkeypatch.undo()
    # a score changes: the cached records are not read again
    version = cache.scores_version(qa_ws)
    qa_ws.db.execute(
        "update scores set value = 1.0 where metric = 'exact_match' and generation_id in"
        " (select id from generations where model = 'base')"
    )
    assert cache.scores_version(qa_ws) > version
    after = aggregate.aggregate(qa_ws, "qa", teacher="teacher", n_boot=300)
    assert _rec(after, "base", "all", "exact_match")["value"] == 1.0
    assert _rec(first, "base", "all", "exact_match")["value"] == pytest.approx(2 / 6)
    assert after == aggregate.aggregate(qa_ws, "qa", teacher="teacher", n_boot=300, use_cache=False)


def test_a_fully_scored_selection_is_not_rescored_until_a_score_changes(qa_ws):
    first = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    again = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    assert again["computed"] == 0 and again["cached"] == first["computed"]
    # a deleted score is noticed (the scores' version moved) and recomputed
    qa_ws.db.execute("delete from scores where id = (select max(id) from scores)")
    third = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    assert third["computed"] == 1
    # so is a new output
    add_outputs(qa_ws, "imit", "qa", ["Paris"])
    fourth = progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    assert fourth["computed"] > 0


def test_vectorised_intervals_equal_the_plain_bootstrap():
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.random(57)
    y = 2 * x + rng.random(57)
    idx = np.concatenate(list(stats._index_chunks(57, 400, stats.SEED)))
    lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    iv = stats.mean_ci(list(x), n_boot=400)
    assert (iv.low, iv.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    lo, hi = np.percentile(stats._pearson_rows(x[idx], y[idx]), [2.5, 97.5])
    iv = stats.pearson_ci(x, y, n_boot=400)
    assert (iv.low, iv.high) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))


def test_compare_view_and_ratings_read_one_teacher_and_one_decoding(qa_ws):
    from core.analysis import ratings
    from core.analysis.compare import CompareView

    progress.run(scoring.score_suite(qa_ws, "qa", teacher="teacher"))
    progress.run(scoring.score_suite(qa_ws, "qa", teacher="other"))  # the suite's teacher is now "other"
    view = CompareView(qa_ws, "qa", ["base", "imit", "other"])
    assert view.teacher == "other" and view.role("other") == "teacher"
    got = view.metrics["unigram_overlap"][1]
    assert list(got) == pytest.approx([unigram_overlap(s, t) for s, t in zip(IMIT, OTHER)])
    # a newer decoding of imit on two items: the view and the blind rating queue show only it
    _add_decoded(qa_ws, "imit", ["sampled one", "sampled two"], {"temperature": 0.7, "seed": 0})
    view = CompareView(qa_ws, "qa", ["base", "imit", "other"])
    assert [o for o in view.outputs[1] if o is not None] == ["sampled one", "sampled two"]
    queue = ratings.pairwise_queue(qa_ws, "qa", "imit", seed=1, rater="r")
    assert {t.teacher for t in queue} == {"other"} and len(queue) == 2
