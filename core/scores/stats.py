"""Uncertainty for scores: bootstrap intervals (vectorised numpy), paired tests, correlations, gap closed.

All resampling is over items with a seeded generator, so the same scores give the same interval
on every run. Paired statistics resample the *same* item indices for every model, which is what
makes a small difference between two models on one suite trustworthy or not. Written on numpy
alone (no scipy dependency): each function is a few lines and its definition is in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
SEED = 20230525  # the paper's arXiv date: any fixed seed would do
# Rows of resampled indices per chunk: bounds memory at ~CHUNK × n × 8 bytes.
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None
    n: int


def _index_chunks(n: int, n_boot: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def bootstrap(
    stat: Callable[[np.ndarray], np.ndarray], n: int, *, n_boot: int = N_BOOT, seed: int = SEED
) -> np.ndarray:
    """`stat(idx)` takes a (k, n) matrix of resampled item indices and returns k statistics."""
    return np.concatenate([np.asarray(stat(idx), dtype=float) for idx in _index_chunks(n, n_boot, seed)])


def _percentiles(samples: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None, None
    lo, hi = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How many times each item is drawn in each resample: (k, n) multiplicities of a (k, n)
    matrix of indices, so that a resampled mean of every column of X at once is counts @ X / n."""
    k = idx.shape[0]
    flat = (np.arange(k, dtype=np.int64)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=k * n).reshape(k, n).astype(float)


def _boot_moments(n: int, cols: list[np.ndarray], *, n_boot: int, seed: int) -> list[np.ndarray]:
    """Resampled means (n_boot, k) of each (n, k) matrix in `cols`, all under the same resamples."""
    parts: list[list[np.ndarray]] = [[] for _ in cols]
    for idx in _index_chunks(n, n_boot, seed):
        c = _counts(idx, n)
        for p, X in zip(parts, cols):
            p.append(c @ X)
    return [np.concatenate(p) / n for p in parts]


def mean_cis(columns, *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = SEED) -> list[Interval]:
    """`mean_ci` of many columns at once: columns of the same size share their resamples (the same
    seeded index matrix `mean_ci` draws for that size), and one matrix product gives them all."""
    xs = [np.asarray([v for v in col if v is not None], dtype=float) for col in columns]
    out: list[Interval | None] = [None] * len(xs)
    by_n: dict[int, list[int]] = {}
    for j, x in enumerate(xs):
        n = x.size
        if n == 0:
            out[j] = Interval(None, None, None, 0)
        elif n == 1:
            out[j] = Interval(float(x[0]), None, None, 1)  # no interval from one value
        elif np.all(x == x[0]):
            out[j] = Interval(float(x[0]), float(x[0]), float(x[0]), n)
        else:
            by_n.setdefault(n, []).append(j)
    for n, js in by_n.items():
        (boot,) = _boot_moments(n, [np.stack([xs[j] for j in js], axis=1)], n_boot=n_boot, seed=seed)
        # Resampled means are always finite: every column's percentiles in one call.
        lows, highs = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        for c, j in enumerate(js):
            out[j] = Interval(float(xs[j].mean()), float(lows[c]), float(highs[c]), n)
    return out  # type: ignore[return-value]


def mean_ci(values, *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = SEED) -> Interval:
    """Mean with a percentile-bootstrap (1 - alpha) interval; None values are left out; no interval
    (low and high None) from a single value."""
    return mean_cis([values], n_boot=n_boot, alpha=alpha, seed=seed)[0]


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (rows are resamples); nan where a row has no variance."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=-1) / den, np.nan)


def pearson(x, y) -> float | None:
    r = float(_pearson_rows(np.asarray(x, float), np.asarray(y, float)))
    return None if math.isnan(r) else r


def pearson_cis(pairs, *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = SEED) -> list[Interval]:
    """`pearson_ci` of many (x, y) pairs at once: the resampled correlations come from resampled
    moments (counts @ x, counts @ x², counts @ xy ...) of centred values, pairs of one size together."""
    out: list[Interval | None] = [None] * len(pairs)
    by_n: dict[int, list[int]] = {}
    arrays = []
    for j, (x, y) in enumerate(pairs):
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        arrays.append((x - x.mean() if x.size else x, y - y.mean() if y.size else y))
        r = pearson(x, y) if x.size >= 3 else None
        if r is None:
            out[j] = Interval(None, None, None, x.size)
        else:
            out[j] = Interval(r, None, None, x.size)
            by_n.setdefault(x.size, []).append(j)
    for n, js in by_n.items():
        X = np.stack([arrays[j][0] for j in js], axis=1)
        Y = np.stack([arrays[j][1] for j in js], axis=1)
        mx, my, mxx, myy, mxy = _boot_moments(n, [X, Y, X * X, Y * Y, X * Y], n_boot=n_boot, seed=seed)
        vx, vy = mxx - mx * mx, myy - my * my
        # A resample of equal values has variance 0 (up to rounding): no correlation, as in pearson().
        eps = 1e-12 * np.maximum((X * X).mean(axis=0), (Y * Y).mean(axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where((vx > eps) & (vy > eps), (mxy - mx * my) / np.sqrt(vx * vy), np.nan)
        for c, j in enumerate(js):
            lo, hi = _percentiles(r[:, c], alpha)
            out[j] = Interval(out[j].value, lo, hi, n)
    return out  # type: ignore[return-value]


def pearson_ci(x, y, *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = SEED) -> Interval:
    """Pearson correlation of paired values with a bootstrap interval over pairs."""
    return pearson_cis([(x, y)], n_boot=n_boot, alpha=alpha, seed=seed)[0]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), float)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(x, y) -> float | None:
    """Spearman's rho: Pearson correlation of the average ranks."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.size < 3:
        return None
    return pearson(_ranks(x), _ranks(y))


# -- paired comparisons --------------------------------------------------------------------------
def paired_bootstrap(a, b, *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = SEED) -> dict:
    """Mean difference a - b over the same items, its interval, and a two-sided bootstrap p-value
    (twice the smaller share of resampled differences on either side of 0)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    d = a - b
    n = d.size
    if n == 0:
        return {"diff": None, "ci_low": None, "ci_high": None, "p": None, "n": 0}
    boot = bootstrap(lambda idx: d[idx].mean(axis=1), n, n_boot=n_boot, seed=seed)
    lo, hi = _percentiles(boot, alpha)
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    if np.all(d == 0):
        p = 1.0
    return {"diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "p": p, "n": n}


def mcnemar_exact(a, b) -> dict:
    """Exact McNemar test for paired 0/1 scores: a two-sided binomial test on the discordant pairs.

    `a_only` = items a gets right and b wrong, `b_only` the reverse; under H0 each discordant item
    is a fair coin, so p = min(1, 2 * P(Binomial(a_only + b_only, 1/2) <= min(a_only, b_only))).
    """
    a = np.asarray(a, float) > 0.5
    b = np.asarray(b, float) > 0.5
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    n = a_only + b_only
    if n == 0:
        p = 1.0
    else:
        k = min(a_only, b_only)
        # Sum in log space via exact integers: fine for thousands of discordant items.
        tail = sum(math.comb(n, i) for i in range(k + 1))
        p = min(1.0, 2 * tail / 2**n)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def transitions(a, b) -> dict:
    """Counts of how items move from model a to model b (0/1 scores): wrong→right and so on."""
    a = np.asarray(a, float) > 0.5
    b = np.asarray(b, float) > 0.5
    return {
        "wrong_to_right": int(np.sum(~a & b)),
        "right_to_wrong": int(np.sum(a & ~b)),
        "right_to_right": int(np.sum(a & b)),
        "wrong_to_wrong": int(np.sum(~a & ~b)),
    }


# -- gap closed -----------------------------------------------------------------------------------
def gap_closed(base, imitation, teacher, *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = SEED) -> dict:
    """(imitation − base) / (teacher − base) on the same items, with a paired bootstrap interval.

    n/a (value None, `reason`) when the denominator's own interval includes 0: the teacher is not
    measurably better than the base on this task, so any ratio would be noise. Also n/a when the
    teacher is measurably *below* the base: there is no gap to close, and a positive ratio would
    read as progress when imitation moved toward a weaker teacher (`teacher_below_base`, and
    `imitation_minus_base`: negative when imitation lost ground toward it).
    """
    b = np.asarray(base, float)
    i = np.asarray(imitation, float)
    t = np.asarray(teacher, float)
    n = b.size
    out = {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "n": n,
        "reason": None,
        "base": float(b.mean()) if n else None,
        "imitation": float(i.mean()) if n else None,
        "teacher": float(t.mean()) if n else None,
    }
    if n < 2:
        out["reason"] = "too few items"
        return out
    den_samples = []
    ratio_samples = []
    for idx in _index_chunks(n, n_boot, seed):
        bm = b[idx].mean(axis=1)
        den = t[idx].mean(axis=1) - bm
        num = i[idx].mean(axis=1) - bm
        den_samples.append(den)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_samples.append(num / den)
    den_samples = np.concatenate(den_samples)
    dlo, dhi = _percentiles(den_samples, alpha)
    out["denominator_ci"] = [dlo, dhi]
    if dlo is None or (dlo <= 0 <= dhi):
        out["reason"] = "teacher − base interval includes 0"
        return out
    den = t.mean() - b.mean()
    if dhi < 0:
        out["teacher_below_base"] = True
        out["imitation_minus_base"] = float(i.mean() - b.mean())
        moved = "moved toward" if i.mean() < b.mean() else "did not follow"
        out["reason"] = f"teacher below base: imitation {moved} a weaker teacher"
        return out
    out["value"] = float((i.mean() - b.mean()) / den)
    out["ci_low"], out["ci_high"] = _percentiles(np.concatenate(ratio_samples), alpha)
    return out
