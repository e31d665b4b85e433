"""QA scoring speed: 100,000 scorings (EM, F1, contains) against the plain evaluation-script style.

The baseline is the classic SQuAD / NQ-open evaluation code written plainly: a `normalize_answer`
of four nested functions, and `exact_match`, `f1` and `contains` each normalising prediction and
every gold alias again, max over aliases. mirage's `core.api.metrics.qa_scores` does more (answer
extraction, Unicode folding, number words) and normalises each string once, caching gold aliases
across outputs. Outputs are built from NQ-open dev (../shared/data): the gold itself, a verbose
"The answer is ..." sentence, another question's gold, a two-sentence answer. One JSON line per
figure. Also times `score_suite` end to end on those outputs in a workspace (SQLite included).

    python benchmarks/bench_scoring.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lines import emit  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "nq-open" / "NQ-open.dev.jsonl"


# -- the straightforward per-item implementation (evaluation-script style) ------------------------
def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def plain_em(prediction, ground_truth):
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def plain_f1(prediction, ground_truth):
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def plain_contains(prediction, ground_truth):
    gold = normalize_answer(ground_truth)
    return float(bool(gold) and f" {gold} " in f" {normalize_answer(prediction)} ")


def max_over(metric, prediction, golds):
    return max(metric(prediction, g) for g in golds)


def plain_scores(prediction, golds):
    return (
        max_over(plain_em, prediction, golds),
        max_over(plain_f1, prediction, golds),
        max_over(plain_contains, prediction, golds),
    )


# -- workload ---------------------------------------------------------------------------------------
def workload(n: int) -> list[tuple[str, list[str]]]:
    rows = [json.loads(line) for line in open(DATA, encoding="utf-8")]
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        gold = r["answer"][0]
        other = rows[(i * 7 + 3) % len(rows)]["answer"][0]
        pred = [gold, f"The answer is {gold}.", other, f"I believe it is {other}. Some sources say {gold} instead."][
            i % 4
        ]
        out.append((pred, r["answer"]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"NQ-open not found at {DATA}", file=sys.stderr)
        return 1
    from core.api import metrics

    work = workload(args.n)

    t = time.perf_counter()
    plain = [plain_scores(p, g) for p, g in work]
    t_plain = time.perf_counter() - t

    metrics.normalize_tokens.cache_clear()  # a cold cache: nothing carried over from earlier runs
    t = time.perf_counter()
    ours = [metrics.qa_scores(p, g) for p, g in work]
    t_ours = time.perf_counter() - t

    emit(f"qa_scoring_{args.n}_seconds", t_ours, "s", "plain evaluation-script functions", t_plain)
    emit(
        "qa_scoring_per_output_us",
        t_ours / args.n * 1e6,
        "us",
        "plain evaluation-script functions",
        t_plain / args.n * 1e6,
    )
    # How often the two agree on containment (the raw output, no extraction in either).
    agree = sum(o["contains"] == p[2] for o, p in zip(ours, plain)) / args.n
    emit("qa_contains_agreement_with_plain", agree, "share", None, None)

    # End to end: store NQ-open dev outputs in a workspace and score them (text metrics + SQLite).
    from core.runtime import progress
    from core.scores.scoring import score_suite
    from core.store.workspace import Workspace, dumps, now

    rows = [json.loads(line) for line in open(DATA, encoding="utf-8")]
    with tempfile.TemporaryDirectory() as d:
        ws = Workspace.init(Path(d) / "ws")
        sid = ws.db.execute("insert into suites (name, kind, created_at) values ('nq', 'qa', ?)", [now()]).lastrowid
        with ws.transaction():
            for i, r in enumerate(rows):
                item = ws.db.execute(
                    "insert into items (suite_id, idx, prompt, gold, content_hash) values (?, ?, ?, ?, ?)",
                    [sid, i, r["question"], dumps(r["answer"]), f"h{i}"],
                ).lastrowid
                ws.db.execute(
                    "insert into generations (model, fingerprint, item_id, prompt, cache_key, output, created_at)"
                    " values ('m', 'fp', ?, '', ?, ?, ?)",
                    [item, f"k{i}", work[i][0], now()],
                )
        t = time.perf_counter()
        counts = progress.run(score_suite(ws, "nq", teacher=None))
        t_suite = time.perf_counter() - t
        t = time.perf_counter()
        progress.run(score_suite(ws, "nq", teacher=None))
        t_cached = time.perf_counter() - t
        ws.close()
    emit(f"score_suite_{len(rows)}_outputs_seconds", t_suite, "s", None, None)
    emit(f"score_suite_{len(rows)}_outputs_cached_seconds", t_cached, "s", "first scoring", t_suite)
    assert counts["computed"] == len(rows) * 8
    return 0


if __name__ == "__main__":
    sys.exit(main())
