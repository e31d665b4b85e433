"""Coverage: how much an imitation dataset supports each eval task and item, and its topic clusters.

For every item of a suite: its k nearest imitation examples by cosine similarity of sentence
embeddings (user turns, or whole conversations), the longest word n-gram it shares with the data,
the GPT-3 13-gram contamination flag, and whether a gold answer appears in an imitation response.
Per task: `support` = share of items whose nearest example is at least `threshold` similar, mean
max similarity, how many distinct examples serve it, all broken down by the examples' source.
Topic clusters: seeded k-means on the example embeddings, top terms by class-based TF-IDF.

Results are stored in the workspace keyed by every input (data and suite contents, embedding
model, text mode, threshold, k, clusters, seed): asked again, they are read back, not recomputed.

DEFAULT_THRESHOLD (0.65): chosen on the shared NQ-open data by
benchmarks/calibrate_coverage_threshold.py. Each EfficientQA dev question (same Natural Questions
distribution, disjoint from NQ-open dev) was paired with its nearest NQ-open dev question under
all-MiniLM-L6-v2. Pairs whose normalised gold answers intersect (bare numbers excluded: years
coincide by chance) ask about the same fact (56 pairs; median similarity 0.79); the other 1,744
nearest pairs are related but different questions (median 0.51); random pairs are unrelated
(median 0.01, 95th percentile 0.17). Youden's J (same-fact recall minus different-fact rate)
peaks at 0.64 (0.82 vs 0.23) and stays within 0.01 of that up to 0.65 (0.80 vs 0.21), where no
random pair reaches; we took the round 0.65. So "supported" means the imitation data holds an
example asking about the same thing, not merely one on the same topic. Other embedding models
have other scales: pass --threshold (or set defaults.coverage_threshold) with another model.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from core.coverage.ngrams import CONTAMINATION_N, NgramIndex, lexical_words
from core.data.datasets import get_dataset, get_suite, iter_examples, iter_items
from core.errors import MirageError, NotFound
from core.models import embeddings as emb
from core.runtime.progress import Progress, Work, check_cancel
from core.store.workspace import Workspace, dumps, now

DEFAULT_THRESHOLD = 0.65
DEFAULT_K = 5
VERSION = 1  # bump when the computation changes, so stored results are recomputed
PREVIEW_CHARS = 240
SAMPLES_PER_CLUSTER = 3
TERMS_PER_CLUSTER = 8
TERM_SAMPLE = 20000  # docs used for cluster terms: c-TF-IDF's top terms settle long before 100k
MINIBATCH_FROM = 20000  # examples above which clusters use mini-batch k-means
SEARCH_CHUNK = 8192  # examples per similarity block: bounds memory at items x chunk floats


class CoverageError(MirageError):
    title = "Coverage"


# -- inputs ---------------------------------------------------------------------------------------------
def _conversation_text(conv: list[dict]) -> str:
    return "\n".join(t.get("content", "") for t in conv if t.get("content"))


def _load_examples(ws: Workspace, data: str, mode: str) -> dict:
    cols = "id, source, content_hash, user_text, assistant_text, n_tokens"
    if mode == "conversation":
        cols += ", conversation"
    rows = list(iter_examples(ws, data, columns=cols))
    if not rows:
        raise CoverageError(f"dataset '{data}' has no examples: nothing to measure coverage against")
    texts = [_conversation_text(r["conversation"]) if mode == "conversation" else r["user_text"] for r in rows]
    return {
        "ids": np.array([r["id"] for r in rows], dtype=np.int64),
        "keys": [r["content_hash"] for r in rows],
        "source": [r["source"] or "" for r in rows],
        "user": [r["user_text"] for r in rows],
        "assistant": [r["assistant_text"] for r in rows],
        "tokens": np.array([r["n_tokens"] for r in rows], dtype=np.int64),
        "texts": texts,
    }


def _load_items(ws: Workspace, suite: str) -> list[dict]:
    rows = list(iter_items(ws, suite))
    if not rows:
        raise CoverageError(f"suite '{suite}' has no items: nothing to measure")
    return rows


def _digest(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def resolve_threshold(ws: Workspace, threshold: float | None) -> float:
    t = threshold if threshold is not None else (ws.config.defaults.coverage_threshold or DEFAULT_THRESHOLD)
    if not -1.0 <= t <= 1.0:
        raise CoverageError(f"--threshold must be a cosine similarity in [-1, 1], got {t}")
    return float(t)


def default_clusters(n: int) -> int:
    """sqrt(n/2), clamped to 2..30: enough topics to tell data apart, few enough to read."""
    if n < 2:
        return 1
    return int(min(n, max(2, min(30, round(math.sqrt(n / 2))))))


# -- nearest neighbours -----------------------------------------------------------------------------------
def nearest(
    items: np.ndarray,
    examples: np.ndarray,
    k: int,
    threshold: float,
    groups: np.ndarray,
    n_groups: int,
    *,
    cancel: threading.Event | None = None,
):
    """Top-k examples per item, how many examples pass `threshold` per item, and per item group.

    Works in blocks of examples so memory stays at items x SEARCH_CHUNK floats, whatever the data
    size. torch rather than numpy: its topk is ~20x faster than numpy's argpartition on these
    blocks and both it and the matmul use every core. Returns (top indices, top similarities,
    count above per item, per group the sorted example indices above threshold for some item).
    """
    import torch

    n_items, n_ex = len(items), len(examples)
    k = min(k, n_ex)
    q = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    best_s = torch.full((n_items, 0), -float("inf"))
    best_i = torch.zeros((n_items, 0), dtype=torch.long)
    above = torch.zeros(n_items, dtype=torch.long)
    group_t = torch.from_numpy(np.asarray(groups, dtype=np.int64))
    served: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
    with torch.inference_mode():
        for start in range(0, n_ex, SEARCH_CHUNK):
            check_cancel(cancel)
            block = torch.from_numpy(np.ascontiguousarray(examples[start : start + SEARCH_CHUNK], dtype=np.float32))
            sims = q @ block.T
            s_top, i_top = torch.topk(sims, min(k, sims.shape[1]), dim=1)
            cand_s = torch.cat([best_s, s_top], dim=1)
            cand_i = torch.cat([best_i, i_top + start], dim=1)
            best_s, pick = torch.topk(cand_s, min(k, cand_s.shape[1]), dim=1)  # sorted, descending
            best_i = torch.gather(cand_i, 1, pick)
            # Only items whose best match in this block passes the threshold can have hits: counting
            # over those rows alone keeps a sparse-support block nearly free.
            hot = torch.nonzero(s_top[:, 0] >= threshold).flatten()
            if len(hot):
                hit = sims[hot] >= threshold
                above[hot] += hit.sum(1)
                hot_group = group_t[hot]
                for g in torch.unique(hot_group).tolist():
                    cols = torch.nonzero(hit[hot_group == g].any(0)).flatten()
                    served[g].append(cols.numpy() + start)
    served_idx = [np.unique(np.concatenate(s)) if s else np.empty(0, np.int64) for s in served]
    return best_i.numpy(), best_s.numpy(), above.numpy(), served_idx


# -- clusters -----------------------------------------------------------------------------------------
def _kmeans(vectors: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n_clusters <= 1:
        return np.zeros(len(vectors), dtype=np.int64), vectors.mean(0, keepdims=True)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(vectors) > MINIBATCH_FROM:
        # Full k-means over 100k x 384 took minutes here; mini-batches reach nearly the same
        # centres in seconds (Sculley 2010), still seeded and so repeatable.
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096, max_iter=20)
    else:
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
    labels = km.fit_predict(vectors)
    return labels.astype(np.int64), km.cluster_centers_


def class_tfidf_terms(texts: Sequence[str], labels: np.ndarray, n_clusters: int, top: int = TERMS_PER_CLUSTER):
    """Top terms per cluster by class-based TF-IDF (BERTopic's c-TF-IDF).

    Each cluster's documents are one class; a term's weight is its frequency in the class (L1
    normalised) times log(1 + A / f), A the mean words per class and f the term's total frequency.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        cv = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_][^\W\d_]+\b")
        x = cv.fit_transform(texts)
    except ValueError:  # only stop words / empty texts
        return [[] for _ in range(n_clusters)]
    import scipy.sparse as sp

    onehot = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(n_clusters, len(labels)))
    counts = np.asarray((onehot @ x).todense(), dtype=np.float64)
    f = counts.sum(0)
    avg = counts.sum() / max(n_clusters, 1)
    tf = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    w = tf * np.log1p(avg / np.maximum(f, 1))
    vocab = cv.get_feature_names_out()
    out = []
    for c in range(n_clusters):
        idx = [i for i in np.argsort(-w[c])[:top] if counts[c, i] > 0]
        out.append([str(vocab[i]) for i in idx])
    return out


def clustering(
    ws: Workspace,
    ds: dict,
    ex: dict,
    vectors: np.ndarray,
    model: emb.EmbeddingModel,
    mode: str,
    n_clusters: int | None,
    seed: int,
    data_hash: str,
) -> dict:
    """The stored clustering for these inputs, computing it the first time."""
    n_clusters = default_clusters(len(ex["ids"])) if not n_clusters else min(int(n_clusters), len(ex["ids"]))
    key = _digest(["clusters", VERSION, ds["id"], data_hash, model.fingerprint, mode, n_clusters, seed])
    row = ws.db.execute("select id, clusters from coverage_clusterings where key = ?", [key]).fetchone()
    if row:
        labels = dict(
            ws.db.execute(
                "select example_id, cluster from coverage_cluster_members where clustering_id = ?", [row[0]]
            ).fetchall()
        )
        return {
            "id": row[0],
            "clusters": json.loads(row[1]),
            "labels": np.array([labels[i] for i in ex["ids"].tolist()], dtype=np.int64),
        }
    x = vectors.astype(np.float32)
    labels, centers = _kmeans(x, n_clusters, seed)
    rng = np.random.default_rng(seed)
    sample = (
        np.arange(len(labels))
        if len(labels) <= TERM_SAMPLE
        else np.sort(rng.choice(len(labels), TERM_SAMPLE, replace=False))
    )
    terms = class_tfidf_terms([ex["user"][i] for i in sample], labels[sample], n_clusters)
    clusters = []
    centers = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    for c in range(n_clusters):
        members = np.flatnonzero(labels == c)
        if len(members):
            close = members[np.argsort(-(x[members] @ centers[c]))[:SAMPLES_PER_CLUSTER]]
        else:
            close = members
        sources = Counter(ex["source"][i] for i in members)
        clusters.append(
            {
                "cluster": c,
                "size": int(len(members)),
                "tokens": int(ex["tokens"][members].sum()),
                "terms": terms[c],
                "label": " / ".join(terms[c][:3]),
                "sources": dict(sources.most_common()),
                "samples": [{"example_id": int(ex["ids"][i]), "text": ex["user"][i][:PREVIEW_CHARS]} for i in close],
            }
        )
    with ws.transaction():
        # Another process (the TUI, a job) may have stored the same clustering meanwhile: same
        # inputs and seed, so keep theirs and read it back.
        taken = ws.db.execute("select 1 from coverage_clusterings where key = ?", [key]).fetchone()
        if not taken:
            cur = ws.db.execute(
                "insert into coverage_clusterings (key, dataset_id, model_key, mode, n_clusters, seed, data_hash,"
                " clusters, created_at) values (?,?,?,?,?,?,?,?,?)",
                [key, ds["id"], model.key, mode, n_clusters, seed, data_hash, dumps(clusters), now()],
            )
            cid = cur.lastrowid
            ws.db.conn.executemany(
                "insert into coverage_cluster_members (clustering_id, example_id, cluster) values (?,?,?)",
                zip([cid] * len(labels), ex["ids"].tolist(), labels.tolist()),
            )
    if taken:
        return clustering(ws, ds, ex, vectors, model, mode, n_clusters, seed, data_hash)
    return {"id": cid, "clusters": clusters, "labels": labels}


# -- the computation ----------------------------------------------------------------------------------
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
    model = emb.resolve_model(embedding_model if embedding_model is not None else ws.config.defaults.embedding_model)
    mode = "conversation" if whole_conversation else "user"
    ex = _load_examples(ws, data, mode)
    items = _load_items(ws, suite)
    data_hash = _digest(f"{i}:{h}" for i, h in zip(ex["ids"].tolist(), ex["keys"]))
    suite_hash = _digest(f"{r['id']}:{r['content_hash']}" for r in items)
    n_clusters = default_clusters(len(ex["ids"])) if not n_clusters else min(int(n_clusters), len(ex["ids"]))
    key = _digest(
        [
            "run",
            VERSION,
            ds["id"],
            s["id"],
            data_hash,
            suite_hash,
            model.fingerprint,
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

    def shifted(gen, base):
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            yield Progress(base + p.done, total, p.detail)

    ex_vec, new_ex = yield from shifted(
        emb.embed(ws, model, mode, ex["keys"], ex["texts"], batch_size=batch_size, devices=devices, cancel=cancel), 0
    )
    done += n_new_ex
    it_vec, new_it = yield from shifted(
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
    )
    done += n_new_it
    check_cancel(cancel)

    yield Progress(done, total, "nearest neighbours")
    task_names = sorted({r["task"] for r in items})
    task_of = np.array([task_names.index(r["task"]) for r in items])
    top_i, top_s, above, served = nearest(it_vec, ex_vec, k, threshold, task_of, len(task_names), cancel=cancel)
    done += later

    yield Progress(done, total, "n-gram overlap")
    index = yield from _phase(
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
    result = _aggregate(
        ex,
        items,
        task_names,
        task_of,
        top_i,
        top_s,
        above,
        served,
        longest,
        contaminated,
        hits,
        labels,
        cl["clusters"],
        threshold,
        suite,
    )
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


def _phase(gen, base: int, weight: int, total: int):
    """Pass a sub-generator's progress on, scaled into its phase's share of the bar."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        frac = (p.done / p.total) if p.total else 0.0
        yield Progress(base + int(weight * frac), total, p.detail)


def _aggregate(
    ex,
    items,
    task_names,
    task_of,
    top_i,
    top_s,
    above,
    served,
    longest,
    contaminated,
    hits,
    labels,
    clusters,
    threshold,
    suite,
) -> dict:
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


# -- storage ------------------------------------------------------------------------------------------
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


# -- subsets ------------------------------------------------------------------------------------------
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
) -> dict:
    """Save a named slice of `data` as a subset dataset a finetune can train on (`--data NAME`).

    Filters combine: `cluster` (from the latest clustering of `data`), `source`, `task_support`
    ((suite, task): examples at least `threshold` similar to one of the task's items, most similar
    first) and `max_tokens` (a budget: whole examples in order until the next would overflow; a
    seeded shuffle when no similarity order applies).
    """
    if not name or not name.strip():
        raise CoverageError("a subset needs a name")
    if ws.db.execute("select 1 from datasets where name = ?", [name]).fetchone():
        raise CoverageError(f"a dataset named '{name}' already exists")
    parent = get_dataset(ws, data)
    mode = "conversation" if whole_conversation else "user"
    ex = _load_examples(ws, data, mode)
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
        ex_vec, _ = _drain(emb.embed(ws, model, mode, ex["keys"], ex["texts"]))
        it_vec, _ = _drain(
            emb.embed(ws, model, "prompt", [r["content_hash"] for r in items], [r["prompt"] for r in items])
        )
        best = np.full(len(ex["ids"]), -np.inf, dtype=np.float32)
        q = it_vec.astype(np.float32)
        for start in range(0, len(ex_vec), SEARCH_CHUNK):
            best[start : start + SEARCH_CHUNK] = (q @ ex_vec[start : start + SEARCH_CHUNK].astype(np.float32).T).max(0)
        keep &= best >= t
        order = np.argsort(-best, kind="stable")
        spec.update({"suite": suite, "task": task, "threshold": t, "embedding_model": model.name})
    if order is None:
        order = np.random.default_rng(seed).permutation(len(ex["ids"]))
    chosen = [i for i in order.tolist() if keep[i]]
    if max_tokens is not None:
        if max_tokens < 1:
            raise CoverageError(f"--max-tokens must be positive, got {max_tokens}")
        spec["max_tokens"] = int(max_tokens)
        budget, picked = 0, []
        for i in chosen:
            if budget + ex["tokens"][i] > max_tokens:
                break
            budget += int(ex["tokens"][i])
            picked.append(i)
        chosen = picked
    if not chosen:
        raise CoverageError(f"subset '{name}' would be empty: no example of '{data}' matches {dumps(spec)}")
    meta = {"spec": spec, "parent": data, "examples": len(chosen), "tokens": int(ex["tokens"][chosen].sum())}
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


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


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
                "spec": spec,
                "filters": ", ".join(
                    f"{k}={v}" for k, v in spec.items() if k not in ("seed", "clustering_id", "embedding_model")
                ),
                "created_at": r["created_at"],
            }
        )
    return out


# -- background job -------------------------------------------------------------------------------------
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
