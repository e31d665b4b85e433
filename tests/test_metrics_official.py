"""exact_match_official (SQuAD v1.1 / NQ-open) beside mirage's lenient exact_match, and lm-eval's nq_open rule."""

from __future__ import annotations

import json

import pytest

from core.api import metrics as M
from core.api import registry as R


@pytest.mark.parametrize(
    "pred,golds,official,lenient,lm_eval",
    [
        # a chat answer that restates the question: only mirage's extraction credits it
        ("The capital of France is Paris.", ["Paris"], 0, 1, 0),
        ("Paris", ["Paris"], 1, 1, 1),
        ("paris.", ["Paris"], 1, 1, 1),
        # articles: SQuAD drops the word "the"; lm-eval's regex leaves its space behind
        ("the Beatles", ["Beatles"], 1, 1, 0),
        # number words: only mirage folds them
        ("one season", ["1 season"], 0, 1, 0),
        ("Café", ["Cafe"], 0, 1, 0),
        # lm-eval stops generation at the first comma
        ("Paris, France", ["Paris"], 0, 0, 1),
    ],
)
def test_official_lenient_and_lm_eval_rules(pred, golds, official, lenient, lm_eval):
    assert M.exact_match_official(pred, golds) == official
    assert M.qa_scores(pred, golds)["exact_match"] == lenient
    assert M.qa_scores(pred, golds)["exact_match_official"] == official
    assert M.exact_match_lm_eval_nq_open(pred, golds) == lm_eval


def test_official_metric_is_a_table1_column_next_to_exact_match():
    cols = R.table_metrics(1)
    assert cols.index("exact_match_official") == cols.index("exact_match") + 1
    assert R.metric("exact_match_official").kinds == frozenset({"qa"})


def _aliases(shared_data):
    rows = []
    for name in ("NQ-open.dev.jsonl", "NQ-open.efficientqa.dev.1.1.jsonl"):
        with open(shared_data / "nq-open" / name, encoding="utf-8") as f:
            rows += [json.loads(line)["answer"] for line in f]
    return rows


def test_official_agrees_with_torchmetrics_on_nq_open_aliases(shared_data):
    """An independent copy of the SQuAD script (torchmetrics' squad) on every NQ-open alias."""
    tm_squad = pytest.importorskip("torchmetrics.functional.text.squad")
    golds = _aliases(shared_data)
    aliases = [a for g in golds for a in g]
    assert len(aliases) == 6490 + 3211  # dev + EfficientQA dev
    # the normalisation, alias by alias
    differ = [a for a in aliases if M.squad_normalize(a) != tm_squad._normalize_text(a)]
    assert differ == []
    # the metric through torchmetrics' public entry point: each alias against the next item's gold
    preds = [{"prediction_text": a, "id": str(i)} for i, a in enumerate(aliases)]
    nxt = [g for i, g in enumerate(golds) for _ in g]
    nxt = nxt[len(golds[0]) :] + nxt[: len(golds[0])]
    target = [{"answers": {"answer_start": [0] * len(g), "text": g}, "id": str(i)} for i, g in enumerate(nxt)]
    ours = sum(M.exact_match_official(a, g) for a, g in zip(aliases, nxt))
    theirs = float(tm_squad.squad(preds, target)["exact_match"]) / 100 * len(aliases)
    assert ours == pytest.approx(theirs, abs=1e-3)
    # every alias matches its own item under both rules
    assert all(M.exact_match_official(a, g) == 1.0 for g in golds for a in g)
    lenient_differs = sum(M.normalize_answer(a) != M.squad_normalize(a) for a in aliases)
    print(f"NQ-open aliases: {len(aliases)}; mirage's normalisation differs from SQuAD's on {lenient_differs}")
