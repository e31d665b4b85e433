"""Subsets: a named slice of a dataset (cluster, source, support of a task, token budget) to train on."""

from __future__ import annotations

import json

import numpy as np

from core.coverage.inputs import CoverageError, load_examples, resolve_threshold
from core.coverage.neighbours import best_similarity
from core.data.datasets import get_dataset, iter_items
from core.errors import NotFound
from core.models import embeddings as emb
from core.runtime.progress import run
from core.store.workspace import Workspace, dumps, now


def make_subset(
    ws: Workspace,
    name: str,
    data: str,
    *,
    cluster: int | None = None,
    source: str | None = None,
    task_support: tuple[str, str] | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    embedding_model: str | None = None,
    whole_conversation: bool = False,
    token_counter=None,
) -> dict:
    """Save a named slice of `data` as a subset dataset a finetune can train on (`--data NAME`).

    Filters combine: `cluster` (from the latest clustering of `data`), `source`, `task_support`
    ((suite, task): examples at least `threshold` similar to one of the task's items, most similar
    first) and `max_tokens` (a budget: whole examples in order until the next would overflow; a
    seeded shuffle when no similarity order applies).

    Tokens are the approximate counts stored at import unless `token_counter` is given: an object
    with `counts(example_ids) -> {id: tokens}` and `name` (`core.finetune.tokens.exact_counter`,
    the count a finetune of a base trains on), which the budget then uses; examples it counts 0
    (nothing left to train on within max_length) are left out, as a finetune would skip them.
    """
    if not name or not name.strip():
        raise CoverageError("a subset needs a name")
    if ws.db.execute("select 1 from datasets where name = ?", [name]).fetchone():
        raise CoverageError(f"a dataset named '{name}' already exists")
    parent = get_dataset(ws, data)
    mode = "conversation" if whole_conversation else "user"
    ex = load_examples(ws, data, mode)
    keep = np.ones(len(ex["ids"]), dtype=bool)
    spec: dict = {"seed": seed}
    if source is not None:
        spec["source"] = source
        keep &= np.array([s == source for s in ex["source"]])
        if not keep.any():
            have = sorted(set(ex["source"]))
            raise CoverageError(f"no examples of '{data}' have source '{source}' (sources: {', '.join(have[:10])})")
    if cluster is not None:
        row = ws.db.execute(
            "select id, n_clusters from coverage_clusterings where dataset_id = ? order by id desc limit 1",
            [parent["id"]],
        ).fetchone()
        if not row:
            raise CoverageError(
                f"no clusters for '{data}' yet: run `mirage coverage --data {data} --suite SUITE` first"
            )
        if not 0 <= cluster < row[1]:
            raise CoverageError(f"cluster {cluster} out of range: '{data}' has clusters 0..{row[1] - 1}")
        members = dict(
            ws.db.execute(
                "select example_id, cluster from coverage_cluster_members where clustering_id = ?", [row[0]]
            ).fetchall()
        )
        spec["cluster"] = cluster
        spec["clustering_id"] = row[0]
        keep &= np.array([members.get(i, -1) == cluster for i in ex["ids"].tolist()])
    order = None
    if task_support is not None:
        suite, task = task_support
        t = resolve_threshold(ws, threshold)
        model = emb.resolve_model(
            embedding_model if embedding_model is not None else ws.config.defaults.embedding_model
        )
        items = [r for r in iter_items(ws, suite, task=task)]
        if not items:
            raise NotFound(f"suite '{suite}' has no items in task '{task}'")
        ex_vec, _ = run(emb.embed(ws, model, mode, ex["keys"], ex["texts"]))
        it_vec, _ = run(
            emb.embed(ws, model, "prompt", [r["content_hash"] for r in items], [r["prompt"] for r in items])
        )
        best = best_similarity(it_vec, ex_vec)
        keep &= best >= t
        order = np.argsort(-best, kind="stable")
        spec.update({"suite": suite, "task": task, "threshold": t, "embedding_model": model.name})
    if order is None:
        order = np.random.default_rng(seed).permutation(len(ex["ids"]))
    chosen = [i for i in order.tolist() if keep[i]]
    if max_tokens is not None and max_tokens < 1:
        raise CoverageError(f"--max-tokens must be positive, got {max_tokens}")
    exact: dict[int, int] = {}  # example index -> exact tokens, as far as counted
    skipped = 0
    if token_counter is not None:
        spec["tokenizer"] = token_counter.name
        picked = []
        budget = 0
        # Counted in batches, in the subset's order: a budget stops the counting, so a small
        # subset of a large dataset tokenizes only what it takes (the rest stays uncounted).
        for start in range(0, len(chosen), 256):
            batch = chosen[start : start + 256]
            counts = token_counter.counts([int(ex["ids"][i]) for i in batch])
            full = False
            for i in batch:
                c = counts.get(int(ex["ids"][i]), 0)
                if c == 0:
                    skipped += 1
                    continue
                if max_tokens is not None and budget + c > max_tokens:
                    full = True
                    break
                budget += c
                exact[i] = c
                picked.append(i)
            if full:
                break
        chosen = picked
    if max_tokens is not None:
        spec["max_tokens"] = int(max_tokens)
        if token_counter is None:
            budget, picked = 0, []
            for i in chosen:
                if budget + ex["tokens"][i] > max_tokens:
                    break
                budget += int(ex["tokens"][i])
                picked.append(i)
            chosen = picked
    if not chosen:
        raise CoverageError(f"subset '{name}' would be empty: no example of '{data}' matches {dumps(spec)}")
    meta = {
        "spec": spec,
        "parent": data,
        "examples": len(chosen),
        "tokens": int(ex["tokens"][chosen].sum()),  # the import's approximate count
        "tokens_approx": True,
        "tokens_exact": sum(exact.values()) if token_counter is not None else None,
        "tokenizer": token_counter.name if token_counter is not None else None,
    }
    if skipped:
        meta["skipped_untrainable"] = skipped
    with ws.transaction():
        cur = ws.db.execute(
            "insert into datasets (name, kind, status, format, source, meta, created_at) values (?,?,?,?,?,?,?)",
            [name, "subset", "ready", "subset", data, dumps(meta), now()],
        )
        sid = cur.lastrowid
        ws.db.conn.executemany(
            "insert into subset_members (subset_id, example_id) values (?, ?)",
            [(sid, int(ex["ids"][i])) for i in chosen],
        )
    return {"name": name, "id": sid, **meta}


def list_subsets(ws: Workspace) -> list[dict]:
    out = []
    for r in ws.db.query("select * from datasets where kind = 'subset' and status = 'ready' order by name"):
        meta = json.loads(r["meta"] or "{}")
        n, tokens = ws.db.execute(
            "select count(*), coalesce(sum(e.n_tokens), 0) from subset_members m join examples e on e.id = m.example_id"
            " where m.subset_id = ?",
            [r["id"]],
        ).fetchone()
        spec = meta.get("spec", {})
        out.append(
            {
                "name": r["name"],
                "parent": meta.get("parent", r["source"]),
                "examples": n,
                "tokens": tokens,
                "tokens_approx": True,  # `tokens`: the import's count; tokens_exact: the base's, if counted
                "tokens_exact": meta.get("tokens_exact"),
                "tokenizer": meta.get("tokenizer"),
                "spec": spec,
                "filters": ", ".join(
                    f"{k}={v}"
                    for k, v in spec.items()
                    if k not in ("seed", "clustering_id", "embedding_model", "tokenizer")
                ),
                "created_at": r["created_at"],
            }
        )
    return out
