"""A coverage run: compute it (embed, nearest, n-grams, clusters, aggregate), store it, read it back.

Results are stored in the workspace keyed by every input (data and suite contents, embedding
model, text mode, threshold, k, clusters, seed): asked again, they are read back, not recomputed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import numpy as np

from core.coverage.aggregate import Findings, aggregate
from core.coverage.clusters import clustering
from core.coverage.inputs import (
    VERSION,
    CoverageError,
    default_clusters,
    digest,
    load_examples,
    load_items,
    resolve_threshold,
)
from core.coverage.neighbours import nearest
from core.coverage.ngrams import CONTAMINATION_N, NgramIndex, lexical_words
from core.data.datasets import get_dataset, get_suite
from core.models import embeddings as emb
from core.runtime.progress import Progress, Work, check_cancel, offset, phase
from core.store.workspace import Workspace, dumps, now

DEFAULT_K = 5


def compute(
    ws: Workspace,
    data: str,
    suite: str,
    *,
    k: int = DEFAULT_K,
    threshold: float | None = None,
    embedding_model: str | None = None,
    whole_conversation: bool = False,
    n_clusters: int | None = None,
    seed: int = 0,
    devices: Sequence[str] | None = None,
    batch_size: int = 64,
    force: bool = False,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Coverage of `suite` by `data`: yields progress, returns the result (see `results`).

    Cancel-safe: embeddings are saved in complete shards as they are made and the results in one
    transaction at the end, so a cancelled run leaves nothing half-written and the next run picks
    up the embedding where this one stopped.
    """
    if k < 1:
        raise CoverageError(f"--k must be at least 1, got {k}")
    ds, s = get_dataset(ws, data), get_suite(ws, suite)
    threshold = resolve_threshold(ws, threshold)
    # A multi-process pool (`devices`) encodes in each worker's own fp32 model: key it as fp32.
    model = emb.resolve_model(
        embedding_model if embedding_model is not None else ws.config.defaults.embedding_model,
        precision="fp32" if devices else None,
    )
    mode = "conversation" if whole_conversation else "user"
    ex = load_examples(ws, data, mode)
    items = load_items(ws, suite)
    data_hash = digest(f"{i}:{h}" for i, h in zip(ex["ids"].tolist(), ex["keys"]))
    suite_hash = digest(f"{r['id']}:{r['content_hash']}" for r in items)
    n_clusters = default_clusters(len(ex["ids"])) if not n_clusters else min(int(n_clusters), len(ex["ids"]))
    key = digest(
        [
            "run",
            VERSION,
            ds["id"],
            s["id"],
            data_hash,
            suite_hash,
            model.vectors_id,
            mode,
            threshold,
            k,
            n_clusters,
            seed,
        ]
    )
    if not force:
        row = ws.db.execute("select id from coverage_runs where key = ?", [key]).fetchone()
        if row:
            yield Progress(1, 1, "coverage: stored results are current")
            return _read_run(ws, row[0])

    ex_store = emb.EmbeddingStore(ws, model, mode)
    it_store = emb.EmbeddingStore(ws, model, "prompt")
    n_new_ex = len(ex_store.missing(ex["keys"]))
    n_new_it = len(it_store.missing([r["content_hash"] for r in items]))
    # Progress counts texts to embed plus fixed weights for the later phases, so the bar moves evenly.
    later = max(50, (n_new_ex + n_new_it) // 20)
    total = n_new_ex + n_new_it + 4 * later
    done = 0
    ex_vec, new_ex = yield from offset(
        emb.embed(ws, model, mode, ex["keys"], ex["texts"], batch_size=batch_size, devices=devices, cancel=cancel),
        0,
        total,
    )
    done += n_new_ex
    it_vec, new_it = yield from offset(
        emb.embed(
            ws,
            model,
            "prompt",
            [r["content_hash"] for r in items],
            [r["prompt"] for r in items],
            batch_size=batch_size,
            devices=devices,
            cancel=cancel,
        ),
        done,
        total,
    )
    done += n_new_it
    check_cancel(cancel)

    yield Progress(done, total, "nearest neighbours")
    task_names = sorted({r["task"] for r in items})
    task_of = np.array([task_names.index(r["task"]) for r in items])
    top_i, top_s, above, served = nearest(it_vec, ex_vec, k, threshold, task_of, len(task_names), cancel=cancel)
    done += later

    yield Progress(done, total, "n-gram overlap")
    index = yield from phase(
        NgramIndex.build(ex["ids"], ex["user"], ex["assistant"], cancel=cancel), done, later // 2, total
    )
    prompts = [r["prompt"] for r in items]
    longest = index.longest_shared(prompts, cancel=cancel)
    n_words = np.array([len(lexical_words(p)) for p in prompts])
    contaminated = (longest >= np.minimum(CONTAMINATION_N, n_words)) & (n_words > 0)
    qa = [(r["gold"] if (r.get("choices") is None and isinstance(r["gold"], list)) else []) for r in items]
    hits = index.answer_hits([[str(a) for a in g] for g in qa])
    done += later

    yield Progress(done, total, "clusters")
    check_cancel(cancel)
    cl = clustering(ws, ds, ex, ex_vec, model, mode, n_clusters, seed, data_hash)
    labels = cl["labels"]
    done += later

    yield Progress(done, total, "aggregating")
    found = Findings(task_names, task_of, top_i, top_s, above, served, longest, contaminated, hits, labels)
    result = aggregate(ex, items, found, cl["clusters"], threshold, suite)
    result.update(
        {
            "data": data,
            "suite": suite,
            "embedding_model": model.name,
            "model_key": model.key,
            "mode": mode,
            "threshold": threshold,
            "k": k,
            "n_clusters": n_clusters,
            "seed": seed,
            "embedded_now": {"examples": new_ex, "items": new_it},
        }
    )
    check_cancel(cancel)
    run_id = _store(ws, key, ds, s, model, mode, threshold, k, cl["id"], data_hash, suite_hash, result)
    yield Progress(total, total, "done")
    out = _read_run(ws, run_id)
    out["embedded_now"] = result["embedded_now"]
    return out


def _store(ws, key, ds, s, model, mode, threshold, k, clustering_id, data_hash, suite_hash, result) -> int:
    with ws.transaction():
        # Results for the same question on older contents are stale once these exist.
        ws.db.execute(
            "delete from coverage_runs where dataset_id = ? and suite_id = ? and model_key = ? and mode = ?"
            " and threshold = ? and k = ? and key != ?",
            [ds["id"], s["id"], model.key, mode, threshold, k, key],
        )
        ws.db.execute("delete from coverage_runs where key = ?", [key])
        cur = ws.db.execute(
            "insert into coverage_runs (key, dataset_id, suite_id, data, suite, model_key, model_name, mode,"
            " threshold, k, n_clusters, seed, clustering_id, data_hash, suite_hash, summary, clusters, created_at)"
            " values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                key,
                ds["id"],
                s["id"],
                ds["name"],
                s["name"],
                model.key,
                model.name,
                mode,
                threshold,
                k,
                result["n_clusters"],
                result["seed"],
                clustering_id,
                data_hash,
                suite_hash,
                dumps(result["summary"]),
                dumps(result["clusters"]),
                now(),
            ],
        )
        run_id = cur.lastrowid
        ws.db.conn.executemany(
            "insert into coverage_items (run_id, item_id, task, max_similarity, n_above, longest_ngram,"
            " contaminated, answer_leak, answer_in_data, neighbors) values (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    run_id,
                    r["item_id"],
                    r["task"],
                    r["max_similarity"],
                    r["n_above"],
                    r["longest_ngram"],
                    int(r["contaminated"]),
                    int(r["answer_leak"]),
                    r["answer_in_data"],
                    dumps(r["neighbors"]),
                )
                for r in result["items"]
            ],
        )
        ws.db.conn.executemany(
            "insert into coverage_tasks (run_id, task, items, support, mean_max_similarity, examples_served,"
            " contaminated, answer_leak, by_source) values (?,?,?,?,?,?,?,?,?)",
            [
                (
                    run_id,
                    t["task"],
                    t["items"],
                    t["support"],
                    t["mean_max_similarity"],
                    t["examples_served"],
                    t["contaminated"],
                    t["answer_leak"],
                    dumps(t["by_source"]),
                )
                for t in result["tasks"]
            ],
        )
    return run_id


def _read_run(ws: Workspace, run_id: int) -> dict:
    run = dict(next(iter(ws.db.query("select * from coverage_runs where id = ?", [run_id]))))
    threshold = run["threshold"]
    items = []
    for r in ws.db.query(
        "select c.*, i.prompt, i.idx from coverage_items c join items i on i.id = c.item_id"
        " where c.run_id = ? order by i.idx",
        [run_id],
    ):
        items.append(
            {
                "item_id": r["item_id"],
                "idx": r["idx"],
                "task": r["task"],
                "prompt": r["prompt"],
                "max_similarity": r["max_similarity"],
                "supported": r["max_similarity"] >= threshold,
                "n_above": r["n_above"],
                "longest_ngram": r["longest_ngram"],
                "contaminated": bool(r["contaminated"]),
                "answer_leak": bool(r["answer_leak"]),
                "answer_in_data": r["answer_in_data"],
                "neighbors": json.loads(r["neighbors"]),
            }
        )
    tasks = []
    for t in ws.db.query("select * from coverage_tasks where run_id = ? order by task", [run_id]):
        t = dict(t)
        t.pop("run_id")
        t["by_source"] = json.loads(t["by_source"])
        tasks.append(t)
    return {
        "run_id": run["id"],
        "data": run["data"],
        "suite": run["suite"],
        "embedding_model": run["model_name"],
        "model_key": run["model_key"],
        "embedding_precision": emb.precision_of_key(run["model_key"]),
        "mode": run["mode"],
        "threshold": threshold,
        "k": run["k"],
        "n_clusters": run["n_clusters"],
        "seed": run["seed"],
        "computed_at": run["created_at"],
        "summary": json.loads(run["summary"]),
        "items": items,
        "tasks": tasks,
        "clusters": json.loads(run["clusters"]),
    }


def _latest_run(ws: Workspace, data: str, suite: str, **match) -> int | None:
    ds, s = get_dataset(ws, data), get_suite(ws, suite)
    sql = "select id from coverage_runs where dataset_id = ? and suite_id = ?"
    args: list = [ds["id"], s["id"]]
    for col, val in match.items():
        if val is not None:
            sql += f" and {col} = ?"
            args.append(val)
    row = ws.db.execute(sql + " order by id desc limit 1", args).fetchone()
    return row[0] if row else None


def results(
    ws: Workspace, data: str, suite: str, *, threshold: float | None = None, k: int | None = None
) -> dict | None:
    """The latest stored coverage of `suite` by `data` (None if never computed)."""
    run_id = _latest_run(ws, data, suite, threshold=threshold, k=k)
    return _read_run(ws, run_id) if run_id else None


def task_support(ws: Workspace, data: str, suite: str) -> dict[str, float]:
    """{task: support} from the latest stored coverage (empty if never computed)."""
    run_id = _latest_run(ws, data, suite)
    if not run_id:
        return {}
    return {r[0]: r[1] for r in ws.db.execute("select task, support from coverage_tasks where run_id = ?", [run_id])}


def item_support(ws: Workspace, data: str, suite: str) -> dict[int, float]:
    """{item_id: max_similarity} from the latest stored coverage (empty if never computed)."""
    run_id = _latest_run(ws, data, suite)
    if not run_id:
        return {}
    return {
        r[0]: r[1]
        for r in ws.db.execute("select item_id, max_similarity from coverage_items where run_id = ?", [run_id])
    }


def list_runs(ws: Workspace) -> list[dict]:
    return [
        dict(r)
        for r in ws.db.query(
            "select id, data, suite, model_name as embedding_model, mode, threshold, k, created_at from coverage_runs"
            " order by id desc"
        )
    ]


def run_job(ctx) -> dict:
    """Job kind "coverage": config {data, suite, k?, threshold?, embedding_model?, whole_conversation?, ...}."""
    c = ctx.config
    res = ctx.drive(
        compute(
            ctx.ws,
            c["data"],
            c["suite"],
            k=int(c.get("k", DEFAULT_K)),
            threshold=c.get("threshold"),
            embedding_model=c.get("embedding_model"),
            whole_conversation=bool(c.get("whole_conversation", False)),
            n_clusters=c.get("clusters"),
            seed=int(c.get("seed", 0)),
            devices=c.get("devices"),
            cancel=ctx.cancel,
        )
    )
    summary = res["summary"]
    ctx.event(message=f"support {summary['support']:.2f} over {summary['items']} items", run_id=res["run_id"])
    return {"run_id": res["run_id"], "support": summary["support"]}
