"""Nearest imitation examples of eval items by cosine similarity, in blocks that bound memory."""

from __future__ import annotations

import threading

import numpy as np

from core.runtime.progress import check_cancel

SEARCH_CHUNK = 8192  # examples per similarity block: bounds memory at items x chunk floats


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


def best_similarity(queries: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """Per example, its highest similarity to any of `queries`, a block of examples at a time."""
    best = np.full(len(examples), -np.inf, dtype=np.float32)
    q = queries.astype(np.float32)
    for start in range(0, len(examples), SEARCH_CHUNK):
        best[start : start + SEARCH_CHUNK] = (q @ examples[start : start + SEARCH_CHUNK].astype(np.float32).T).max(0)
    return best
