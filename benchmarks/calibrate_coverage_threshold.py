"""How the default coverage threshold (core.coverage.DEFAULT_THRESHOLD) was chosen, re-runnable.

Method: NQ-open dev (3,610 questions) and EfficientQA dev (1,800 questions, drawn from the same
Natural Questions distribution but disjoint) are embedded with the packaged all-MiniLM-L6-v2.
For each EfficientQA question we take its nearest NQ dev question. That pair asks about the same
fact when their normalised gold answers intersect (NQ-open normalisation) and the answer is not a
bare number or year (those coincide by chance); otherwise it is a "related but different
question" pair. Random NQ x EfficientQA pairs give the "unrelated" distribution. The threshold is
the cosine similarity that best separates same-fact nearest pairs from different-fact ones
(maximum Youden's J = TPR - FPR); we print the distributions and the separation at a few values.

    python benchmarks/calibrate_coverage_threshold.py [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "nq-open"))
    args = ap.parse_args()
    from core.coverage.ngrams import normalize_answer
    from core.models.embeddings import load, resolve_model

    d = Path(args.data_dir)
    nq = [json.loads(line) for line in open(d / "NQ-open.dev.jsonl")]
    eqa = [json.loads(line) for line in open(d / "NQ-open.efficientqa.dev.1.1.jsonl")]
    st = load(resolve_model(""))
    a = st.encode([r["question"] for r in nq], batch_size=64, normalize_embeddings=True)
    b = st.encode([r["question"] for r in eqa], batch_size=64, normalize_embeddings=True)
    sims = b @ a.T
    nn = sims.argmax(1)
    best = sims.max(1)

    def answers(r):
        return {normalize_answer(x) for x in r["answer"]} - {""}

    same = []
    for i, j in enumerate(nn):
        shared = answers(eqa[i]) & answers(nq[j])
        same.append(bool(shared) and not all(s.replace(" ", "").isdigit() for s in shared))
    same = np.array(same)
    rng = np.random.default_rng(0)
    rand = sims[rng.integers(0, len(eqa), 20000), rng.integers(0, len(nq), 20000)]

    def q(x):
        return {p: round(float(np.percentile(x, p)), 3) for p in (5, 25, 50, 75, 95)} if len(x) else {}

    print(
        json.dumps(
            {
                "same_fact_nearest": {"n": int(same.sum()), "percentiles": q(best[same])},
                "different_fact_nearest": {"n": int((~same).sum()), "percentiles": q(best[~same])},
                "random_pairs": {"n": len(rand), "percentiles": q(rand)},
            }
        )
    )
    grid = np.round(np.arange(0.50, 0.96, 0.01), 2)
    rows = []
    for t in grid:
        tpr = float((best[same] >= t).mean())
        fpr = float((best[~same] >= t).mean())
        rows.append((float(t), tpr, fpr, tpr - fpr, float((rand >= t).mean())))
    for t, tpr, fpr, j, rfpr in rows:
        if round(t * 100) % 5 == 0:
            print(
                json.dumps(
                    {
                        "threshold": t,
                        "same_fact_recall": round(tpr, 3),
                        "different_fact_rate": round(fpr, 3),
                        "youden_j": round(j, 3),
                        "random_pair_rate": rfpr,
                    }
                )
            )
    t, tpr, fpr, j, rfpr = max(rows, key=lambda r: r[3])
    print(
        json.dumps(
            {
                "best_threshold": t,
                "same_fact_recall": round(tpr, 3),
                "different_fact_rate": round(fpr, 3),
                "youden_j": round(j, 3),
            }
        )
    )
    # The pairs around the chosen value, to eyeball.
    order = np.argsort(np.abs(best - t))[:8]
    for i in order:
        print(
            json.dumps(
                {
                    "sim": round(float(best[i]), 3),
                    "same_fact": bool(same[i]),
                    "efficientqa": eqa[i]["question"],
                    "nq": nq[nn[i]]["question"],
                }
            )
        )


if __name__ == "__main__":
    main()
