"""A coverage run's result from its measurements: per item, per task (and source), per cluster."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from core.coverage.inputs import PREVIEW_CHARS


@dataclass(frozen=True)
class Findings:
    """What a coverage run measured, item by item (rows follow the suite's items)."""

    task_names: list[str]
    task_of: np.ndarray  # each item's index into task_names
    top_i: np.ndarray  # items x k: positions of the nearest examples
    top_s: np.ndarray  # items x k: their cosine similarities
    above: np.ndarray  # per item: examples at or above the threshold
    served: list  # per task: positions of the examples that support it
    longest: np.ndarray  # per item: the longest n-gram shared with an example
    contaminated: np.ndarray  # per item: that n-gram reaches the contamination length
    hits: list  # per item: ids of examples whose response holds a gold answer
    labels: np.ndarray  # per example: its cluster


def aggregate(ex, items, f: Findings, clusters, threshold, suite) -> dict:
    task_names, task_of, served, labels = f.task_names, f.task_of, f.served, f.labels
    top_i, top_s, above, longest, contaminated, hits = f.top_i, f.top_s, f.above, f.longest, f.contaminated, f.hits
    ex_ids = ex["ids"]
    item_recs = []
    for j, r in enumerate(items):
        hit_set = set(hits[j].tolist())
        neighbors = []
        for pos, sim in zip(top_i[j].tolist(), top_s[j].tolist()):
            neighbors.append(
                {
                    "example_id": int(ex_ids[pos]),
                    "similarity": round(float(sim), 4),
                    "source": ex["source"][pos],
                    "cluster": int(labels[pos]),
                    "text": ex["user"][pos][:PREVIEW_CHARS],
                    "answer_in_response": int(ex_ids[pos]) in hit_set,
                }
            )
        max_sim = float(top_s[j][0]) if len(neighbors) else 0.0
        item_recs.append(
            {
                "item_id": r["id"],
                "idx": r["idx"],
                "task": r["task"],
                "prompt": r["prompt"],
                "max_similarity": round(max_sim, 4),
                "supported": bool(max_sim >= threshold),
                "n_above": int(above[j]),
                "longest_ngram": int(longest[j]),
                "contaminated": bool(contaminated[j]),
                "answer_leak": any(n["answer_in_response"] for n in neighbors),
                "answer_in_data": int(len(hit_set)),
                "neighbors": neighbors,
            }
        )
    sources = sorted(set(ex["source"]))
    src_arr = np.array(ex["source"], dtype=object)

    def summarize(recs, served_idx, name):
        n = len(recs)
        by_source = {}
        for src in sources:
            sup = sum(
                1 for r in recs if any(nb["source"] == src and nb["similarity"] >= threshold for nb in r["neighbors"])
            )
            srv = int((src_arr[served_idx] == src).sum()) if len(served_idx) else 0
            if sup or srv:
                by_source[src] = {"support": round(sup / n, 4), "examples_served": srv}
        return {
            "task": name,
            "items": n,
            "support": round(sum(r["supported"] for r in recs) / n, 4),
            "mean_max_similarity": round(float(np.mean([r["max_similarity"] for r in recs])), 4),
            "examples_served": int(len(served_idx)),
            "contaminated": int(sum(r["contaminated"] for r in recs)),
            "answer_leak": int(sum(r["answer_leak"] for r in recs)),
            "by_source": by_source,
        }

    task_recs = [
        summarize([r for r, t in zip(item_recs, task_of) if t == g], served[g], name)
        for g, name in enumerate(task_names)
    ]
    all_served = np.unique(np.concatenate(served)) if served else np.empty(0, np.int64)
    summary = summarize(item_recs, all_served, "all")

    # Which tasks each cluster serves: items whose above-threshold neighbours fall in the cluster.
    serves: dict[int, Counter] = defaultdict(Counter)
    for r in item_recs:
        for c in {nb["cluster"] for nb in r["neighbors"] if nb["similarity"] >= threshold}:
            serves[c][r["task"]] += 1
    cluster_recs = []
    for c in clusters:
        c = dict(c)
        c["tasks"] = [{"suite": suite, "task": t, "items": n} for t, n in serves[c["cluster"]].most_common()]
        cluster_recs.append(c)
    return {"summary": summary, "items": item_recs, "tasks": task_recs, "clusters": cluster_recs}
