"""Known-answer tables for answer normalisation, QA matching, extraction and style features; stats."""

import numpy as np
import pytest

from core.api import metrics as M
from core.scores import stats


@pytest.mark.parametrize(
    "text,expected",
    [
        # articles, case, punctuation, whitespace (the standard NQ-open / SQuAD normalisation)
        ("The Beatles", "beatles"),
        ("a tale of two cities", "tale of 2 cities"),
        ("An   apple\ta day", "apple day"),
        ("Theater", "theater"),  # "the" only as a whole word
        ("U.S.A.", "usa"),
        ("rock 'n' roll!", "rock n roll"),
        ("Jean-Paul Sartre", "jeanpaul sartre"),  # hyphen removed like the plain script
        # unicode: accents, compatibility forms, unicode punctuation
        ("Café", "cafe"),
        ("Zürich", "zurich"),
        ("“Déjà vu”", "deja vu"),
        ("ﬁnance", "finance"),
        ("Beyoncé — Halo", "beyonce halo"),
        ("¿Qué?", "que"),
        # numbers
        ("1,000", "1000"),
        ("3.5 million", "3.5 million"),
        ("One season", "1 season"),
        ("twenty-one", "twentyone"),
        ("forty", "40"),
        ("$5", "5"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert M.normalize_answer(text) == expected


@pytest.mark.parametrize(
    "pred,golds,em,f1,contains",
    [
        ("Paris", ["Paris"], 1, 1.0, 1),
        ("the Paris.", ["paris"], 1, 1.0, 1),
        ("Paris, France", ["Paris"], 0, 2 / 3, 1),
        ("London", ["Paris", "City of Light"], 0, 0.0, 0),
        ("December 1972", ["14 December 1972 UTC", "December 1972"], 1, 1.0, 1),
        ("in 1972", ["1"], 0, 0.0, 0),  # whole-token containment: "1" is not in "1972"
        ("one", ["1"], 1, 1.0, 1),
        ("Cafe de Flore", ["Café de Flore"], 1, 1.0, 1),
    ],
)
def test_qa_metrics(pred, golds, em, f1, contains):
    assert M.exact_match(pred, golds) == em
    assert M.f1(pred, golds) == pytest.approx(f1)
    assert M.contains(pred, golds) == contains


@pytest.mark.parametrize(
    "output,answer,rule",
    [
        ("Paris", "Paris", "raw"),
        ("The answer is Paris.", "Paris", "answer_is"),
        ("I think the correct answer is **Mount Everest**. It is 8,849 m tall.", "Mount Everest", "answer_is"),
        ("Answer: Canberra", "Canberra", "prefix"),
        ("Tokyo\n\nTokyo is the capital of Japan.", "Tokyo", "first_line"),
        ("Canberra is the capital. Many think it is Sydney.", "Canberra is the capital", "first_sentence"),
        ("He served in the U.S. Army", "He served in the U.S. Army", "raw"),
        ("The capital of Australia is **Canberra**, not Sydney.", "Canberra", "bold"),
        ("**Note:** it is **Canberra**.", "Note: it is Canberra", "raw"),  # two bold spans: no bold rule
        ("**Canberra**", "Canberra", "raw"),
        ("The capital of France is Paris.", "Paris", "restatement"),
        ("The year World War I began was 1914.", "1914", "restatement"),
        ("The chemical formula for water is H2O. This is a fundamental reaction", "H2O", "restatement"),
        ("Paris is the capital of France.", "Paris is the capital of France", "raw"),  # answer first: kept
        (
            "The play was written by the renowned English playwright William Shakespeare in his early years",
            "The play was written by the renowned English playwright William Shakespeare in his early years",
            "raw",
        ),
        ("", "", "empty"),
    ],
)
def test_extract_answer(output, answer, rule):
    assert M.extract_answer(output) == (answer, rule)


def test_qa_scores_em_on_extracted_contains_on_raw():
    s = M.qa_scores("Sure! The answer is Canberra. Sydney is bigger though.", ["Canberra"])
    assert (s["exact_match"], s["f1"], s["contains"], s["rule"]) == (1.0, 1.0, 1.0, "answer_is")
    s = M.qa_scores("Well, it is definitely not Sydney; Canberra is the capital.", ["Canberra"])
    assert s["exact_match"] == 0.0 and s["contains"] == 1.0


@pytest.mark.parametrize(
    "output,letter,rule",
    [
        ("B", "B", "leading"),
        ("(C) Earth", "C", "leading"),
        ("D. Mars", "D", "leading"),
        ("The answer is (B).", "B", "answer_is"),
        ("A good pick would be C", "C", "standalone"),
        ("Mercury, of course", "B", "choice_text"),
        ("no idea", None, "none"),
    ],
)
def test_extract_letter(output, letter, rule):
    assert M.extract_letter(output, ["Venus", "Mercury", "Earth", "Mars"]) == (letter, rule)


def test_style_features():
    listed = "Here are some:\n\n1. Jazz\n2. Blues\n3. Swing\n\nOverall, the 1920s were lively."
    assert M.has_list(listed) and M.ends_with_summary(listed)
    assert M.has_list("- a\n- b") and not M.has_list("- only one item")
    assert not M.ends_with_summary("Overall, yes.")  # a single paragraph is no summary
    assert M.ends_with_summary("Body.\n\n**In conclusion**, it works.")
    assert M.ends_with_summary("Body.\n\nTo summarize: fine.")
    assert not M.ends_with_summary("Body.\n\nThe overall picture is fine.")
    assert M.markdown_elements("# T\n\n**bold** and\n\n```py\nx\n```") == ["heading", "bold", "code"]
    assert M.stock_phrases("As an AI language model, I can't. I hope this helps!") == [
        "as an ai language model",
        "as an ai",
        "i hope this helps",
        "hope this helps",
    ]


def test_unigram_overlap_definition():
    # model: the cat sat (3), teacher: the cat sat on the mat (6); overlap 3 → P=1, R=.5, F1=2/3
    assert M.unigram_overlap("The cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert M.unigram_overlap("the the the", "the") == pytest.approx(0.5)  # multiset: P=1/3, R=1
    assert M.unigram_overlap("", "") == 1.0 and M.unigram_overlap("x", "") == 0.0
    assert M.unigram_overlap("a b", "b a") == 1.0


# -- stats ----------------------------------------------------------------------------------------
def test_bootstrap_interval_coverage_bernoulli():
    rng = np.random.default_rng(0)
    p, n = 0.3, 200
    hits = 0
    for trial in range(200):
        x = (rng.random(n) < p).astype(float)
        iv = stats.mean_ci(x, n_boot=1000, seed=trial)
        hits += iv.low <= p <= iv.high
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_interval_coverage_normal_mean():
    rng = np.random.default_rng(1)
    hits = sum(
        (lambda iv: iv.low <= 5.0 <= iv.high)(stats.mean_ci(rng.normal(5.0, 2.0, 100), n_boot=1000, seed=t))
        for t in range(200)
    )
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_is_seeded_and_handles_edges():
    x = [1, 0, 1, 1, 0, 1]
    assert stats.mean_ci(x) == stats.mean_ci(x)
    assert stats.mean_ci([]).n == 0 and stats.mean_ci([None, None]).value is None
    iv = stats.mean_ci([1.0, 1.0, 1.0])
    assert (iv.value, iv.low, iv.high, iv.n) == (1.0, 1.0, 1.0, 3)


def test_mcnemar_exact_and_transitions():
    a = [1] * 10 + [0] * 10
    b = [1] * 10 + [1] * 8 + [0] * 2  # 8 items b-only, none a-only
    r = stats.mcnemar_exact(b, a)
    assert (r["a_only"], r["b_only"]) == (8, 0)
    assert r["p"] == pytest.approx(2 / 2**8)
    assert stats.mcnemar_exact(a, a)["p"] == 1.0
    assert stats.transitions(a, b) == {
        "wrong_to_right": 8,
        "right_to_wrong": 0,
        "right_to_right": 10,
        "wrong_to_wrong": 2,
    }


def test_paired_bootstrap_detects_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 300)
    b = a + 0.2 + rng.normal(0, 0.1, 300)  # a small shift, tightly paired
    r = stats.paired_bootstrap(b, a)
    assert r["ci_low"] > 0.1 and r["ci_high"] < 0.3 and r["p"] < 0.01


def test_correlations():
    assert stats.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
    assert stats.pearson([1, 1, 1], [1, 2, 3]) is None


def test_gap_closed_known_values_and_na():
    base = np.array([1] * 100 + [0] * 300, float)  # 25%
    teacher = np.array([1] * 300 + [0] * 100, float)  # 75%
    imit = np.array([1] * 200 + [0] * 200, float)  # 50%  → gap closed 0.5
    g = stats.gap_closed(base, imit, teacher, n_boot=500)
    assert g["value"] == pytest.approx(0.5) and g["ci_low"] < 0.5 < g["ci_high"]
    same = stats.gap_closed(base, imit, base.copy()[::-1], n_boot=500)  # teacher == base on average
    assert same["value"] is None and "includes 0" in same["reason"]
