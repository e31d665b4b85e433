"""core.api.registry and core.api.suites: every metric the scorer writes is registered, each suite
kind's primary metric is a factuality metric of that kind, report tables come from the registry."""

from __future__ import annotations

import pytest
from compare_data import add_generation, add_suite, set_roles

from core.analysis import report
from core.api import registry as R
from core.api import suites as S
from core.errors import FieldError
from core.runtime import progress
from core.scores import judge, scoring


def _scored_metrics(ws) -> set[str]:
    return {r[0] for r in ws.db.execute("select distinct metric from scores")}


def test_every_metric_the_scorer_writes_is_registered_with_its_version(ws):
    set_roles(ws)
    qa = add_suite(ws, "qa", [{"prompt": "Capital of France?", "gold": ["Paris"]}])
    mc = add_suite(ws, "mc", [{"prompt": "Pick", "gold": ["B"], "choices": ["x", "y"]}], kind="mc")
    for ids in (qa, mc):
        add_generation(ws, "teacher", ids[0], "- Paris\n- B\n\nIn summary, B.")
        add_generation(ws, "base", ids[0], "B")
    for suite in ("qa", "mc"):
        progress.run(scoring.score_suite(ws, suite, teacher="teacher"))
    written = _scored_metrics(ws)
    assert {"exact_match", "f1", "contains", "mc_accuracy", "unigram_overlap", "length_words"} <= written
    assert all(R.is_registered(m) for m in written), written - set(R.VERSIONS)
    for metric, version in ws.db.execute("select metric, version from scores"):
        assert version == R.metric(metric).version


def test_what_each_computation_writes_is_what_the_registry_declares():
    g = {"output": "B", "gold": ["Paris"], "choices": ["x", "y"], "item_prompt": "p"}
    for name in ("qa", "mc"):
        kind = S.suite_kind(name)
        assert set(kind.score_output({**g, "gold": ["B"] if name == "mc" else g["gold"]})) == set(
            kind.inline_factuality
        )
    assert S.suite_kind("code").inline_factuality == ()
    assert S.suite_kind("code").metrics(requires=R.SANDBOX) == ("pass@1",)
    assert set(judge.TEMPLATES) == set(R.names(R.metrics(requires=R.JUDGE)))
    assert scoring.OWN_STYLE == (
        "uses_list",
        "ends_with_summary",
        "markdown_structure",
        "stock_phrases",
        "length_words",
    )
    assert scoring.TEACHER_STYLE == ("list_when_teacher_lists", "summary_when_teacher_summarizes", "unigram_overlap")


@pytest.mark.parametrize("name", R.SUITE_KIND_NAMES)
def test_primary_metric_is_a_registered_factuality_metric_of_the_kind(name):
    kind = S.suite_kind(name)
    spec = R.metric(kind.primary)
    assert spec.family == R.FACTUALITY and name in spec.kinds and spec.table == 1
    assert kind.verdict_metric({kind.primary, "unigram_overlap"}) == kind.primary
    assert kind.verdict_metric({"unigram_overlap"}) is None


def test_verdict_falls_back_to_the_kinds_other_factuality_metrics_only():
    qa = S.suite_kind("qa")
    assert qa.verdict_metric({"contains", "f1"}) == "f1"  # registry (Table 1) order
    assert qa.verdict_metric({"mc_accuracy", "pass@1"}) is None  # another kind's metrics never decide


def test_verdicts_and_convincing_but_wrong():
    qa, prompts = S.suite_kind("qa"), S.suite_kind("prompts")
    assert qa.verdict({"exact_match": 1.0}) == S.CORRECT
    assert qa.verdict({"exact_match": 0.0}) == S.WRONG
    assert qa.verdict({"exact_match": None}) == S.UNSCORED
    assert qa.verdict({"exact_match": float("nan")}) == S.UNSCORED
    assert prompts.verdict({"judge_claims": 0.9}) == S.WRONG  # right only when every claim holds
    wrong_close = {"exact_match": 0.0, "contains": 0.0, "unigram_overlap": 0.5}
    assert qa.convincing_but_wrong(wrong_close)
    assert not qa.convincing_but_wrong({**wrong_close, "contains": 1.0})  # the gold is in the output
    assert not qa.convincing_but_wrong({**wrong_close, "unigram_overlap": 0.1})
    assert not qa.convincing_but_wrong({**wrong_close, "list_when_teacher_lists": 0.0})
    assert not qa.convincing_but_wrong({**wrong_close, "exact_match": 1.0})


def test_report_tables_and_formatting_come_from_the_registry():
    assert R.table_metrics(1) == (
        "exact_match",
        "exact_match_official",
        "f1",
        "contains",
        "mc_accuracy",
        "mc_accuracy_loglik",
        "pass@1",
        "pass@5",
        "pass@10",
        "judge_correct",
        "judge_claims",
    )
    assert R.table_metrics(2)[:4] == (
        "list_when_teacher_lists",
        "summary_when_teacher_summarizes",
        "unigram_overlap",
        "length_correlation",
    )
    assert all(R.metric(m).family == R.FACTUALITY for m in R.table_metrics(1))
    assert report.fmt("exact_match", 0.5) == "50.0" and report.fmt("length_correlation", 0.5) == "0.50"
    assert "length_correlation" not in R.VERSIONS  # computed when aggregating, never stored


def test_register_metric_rejects_duplicates_and_unknown_kinds():
    with pytest.raises(ValueError, match="registered already"):
        R.register_metric("exact_match", version="1", family=R.FACTUALITY)
    with pytest.raises(ValueError, match="unknown suite kinds"):
        R.register_metric("new_metric", version="1", family=R.FACTUALITY, kinds=("essay",))


@pytest.mark.parametrize(
    "rec, kind, want",
    [
        ({"question": "Q?", "answer": "A"}, "qa", {"prompt": "Q?", "gold": ["A"]}),
        ({"question": "Q?", "answers": ["A", 3]}, "qa", {"prompt": "Q?", "gold": ["A", "3"]}),
        ({"question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": 2}, "mc", {"gold": ["C"]}),
        ({"question": "Q?", "choices": ["a", "b"], "answer": "b"}, "mc", {"gold": ["B"], "choices": ["a", "b"]}),
        (
            {"prompt": "def f():", "test": "assert f()", "entry_point": "f", "canonical_solution": " return 1"},
            "code",
            {"tests": "assert f()", "entry_point": "f", "meta": {"canonical_solution": " return 1"}},
        ),
        ({"instruction": "Write", "input": "more"}, "prompts", {"prompt": "Write\n\nmore", "gold": []}),
    ],
)
def test_import_fields_per_kind(rec, kind, want):
    assert S.detect_kind(rec) == kind
    item = S.read_item(kind, rec)
    assert set(item) == {"prompt", "gold", "choices", "tests", "entry_point", "meta"}
    assert {k: item[k] for k in want} == want


@pytest.mark.parametrize(
    "rec, kind, field, reason",
    [
        ({"question": "Q?"}, "qa", "answer", "missing"),
        ({"question": "Q?", "answers": []}, "qa", "answers", "non-empty list"),
        ({"question": " ", "answer": "A"}, "qa", "question", "empty"),
        ({"question": "Q?", "choices": ["a", "b"], "answer": 5}, "mc", "answer", "index 5"),
        ({"question": "Q?", "choices": ["a"], "answer": 0}, "mc", "choices", "at least 2"),
        ({"prompt": "def f():", "test": 1, "entry_point": "f"}, "code", "test", "expected a string"),
        ({"input": "x"}, "prompts", "instruction", "missing"),
        ([1], "qa", None, "expected an object"),
    ],
)
def test_import_field_errors_name_the_field(rec, kind, field, reason):
    with pytest.raises(FieldError, match=reason) as e:
        S.read_item(kind, rec)
    assert e.value.field == field


def test_prompt_rendering_per_kind():
    qa, mc, code = S.suite_kind("qa"), S.suite_kind("mc"), S.suite_kind("code")
    shot = {"id": 1, "prompt": "2+2?", "gold": ["4"]}
    item = {"id": 2, "prompt": "3+3?", "gold": ["6"], "choices": ["5", "6"]}
    assert qa.completion_prompt(item, [shot]) == (
        "Question: 2+2?\nAnswer: 4\n\nQuestion: 3+3?\nAnswer:",
        ["\n", "\nQuestion:"],
    )
    assert mc.chat_messages(item)[0]["content"] == "3+3?\nA. 5\nB. 6\n\nAnswer with the letter of the correct choice."
    assert code.completion_prompt({"prompt": "def f():"}, []) == ("def f():", S.CODE_STOPS)
    assert qa.shot_pool([shot, item], 1) == [shot, item] and code.shot_pool([shot], 3) == []
    assert S.MCKind.cloze_prompt("Q") == "Question: Q\nAnswer:" and S.MCKind.cloze_prompt("Q\nAnswer:") == "Q\nAnswer:"
