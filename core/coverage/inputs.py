"""What a coverage run reads: a dataset's examples, a suite's items, the threshold, the input digests.

DEFAULT_THRESHOLD (0.65): chosen on the shared NQ-open data by
benchmarks/calibrate_coverage_threshold.py. Each EfficientQA dev question (same Natural Questions
distribution, disjoint from NQ-open dev) was paired with its nearest NQ-open dev question under
all-MiniLM-L6-v2. Pairs whose normalised gold answers intersect (bare numbers excluded: years
coincide by chance) ask about the same fact (56 pairs; median similarity 0.79); the other 1,744
nearest pairs are related but different questions (median 0.51); random pairs are unrelated
(median 0.01, 95th percentile 0.17). Youden's J (same-fact recall minus different-fact rate)
peaks at 0.64 (0.82 vs 0.23) and stays within 0.01 of that up to 0.65 (0.80 vs 0.21), where no
random pair reaches: hence the round 0.65. So "supported" means the imitation data holds an
example asking about the same thing, not merely one on the same topic. Other embedding models
have other scales: pass --threshold (or set defaults.coverage_threshold) with another model.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from core.data.datasets import iter_examples, iter_items
from core.errors import MirageError
from core.store.workspace import Workspace

DEFAULT_THRESHOLD = 0.65
VERSION = 1  # bump when the computation changes, so stored results are recomputed
PREVIEW_CHARS = 240  # characters of an example's text a result shows


class CoverageError(MirageError):
    title = "Coverage"


def _conversation_text(conv: list[dict]) -> str:
    return "\n".join(t.get("content", "") for t in conv if t.get("content"))


def load_examples(ws: Workspace, data: str, mode: str) -> dict:
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


def load_items(ws: Workspace, suite: str) -> list[dict]:
    rows = list(iter_items(ws, suite))
    if not rows:
        raise CoverageError(f"suite '{suite}' has no items: nothing to measure")
    return rows


def digest(parts) -> str:
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
