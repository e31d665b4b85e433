"""Topic clusters of a dataset's examples: seeded k-means on their embeddings, terms by c-TF-IDF."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import numpy as np

from core.coverage.inputs import PREVIEW_CHARS, VERSION, default_clusters, digest
from core.models import embeddings as emb
from core.store.workspace import Workspace, dumps, now

SAMPLES_PER_CLUSTER = 3
TERMS_PER_CLUSTER = 8
TERM_SAMPLE = 20000  # docs used for cluster terms: c-TF-IDF's top terms settle long before 100k
MINIBATCH_FROM = 20000  # examples above which clusters use mini-batch k-means


def _kmeans(vectors: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n_clusters <= 1:
        return np.zeros(len(vectors), dtype=np.int64), vectors.mean(0, keepdims=True)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(vectors) > MINIBATCH_FROM:
        # Full k-means over 100k x 384 takes minutes; mini-batches reach nearly the same
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
    key = digest(["clusters", VERSION, ds["id"], data_hash, model.vectors_id, mode, n_clusters, seed])
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
