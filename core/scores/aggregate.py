"""Stored scores as per model × task × metric means with bootstrap 95% intervals (`aggregate`).

The records are cached in the workspace (core.scores.cache) under a hash of their inputs: the
generations read, the teacher, the items, the bootstrap size and the scores' version, so a
rescore that changes nothing reads them back instead of resampling thousands of scores again.
"""

from __future__ import annotations

from collections import defaultdict

from core.api import metrics as M
from core.api import registry
from core.data.datasets import get_suite
from core.scores import cache, stats, winrate
from core.scores import decodings as D
from core.scores.outputs import resolve_roles, sample_generations, teacher_clause
from core.store.db import select_in
from core.store.workspace import Workspace

# Bump when what `aggregate` computes from the same scores changes (it is part of the cache key).
AGGREGATE_VERSION = "3"


def aggregate(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    decoding: dict | str | None = None,
    n_boot: int = stats.N_BOOT,
    use_cache: bool = True,
) -> list[dict]:
    """Records {model, task, metric, value, ci_low, ci_high, n}, task "all" for the whole suite.

    Means of per-output scores with bootstrap 95% intervals (nulls left out: not applicable or
    not computable; no interval from one value); style scores only those measured against
    `teacher`; `length_correlation` is Pearson's r over items between the model's and the
    teacher's output lengths in words, with a bootstrap interval over items; `judge_preference_lc`
    is AlpacaEval 2's length-controlled win rate over the items the judge compared (at least 5);
    `pass@k` (k in PASS_K) by the unbiased estimator where items have at least k samples.
    """
    models, teacher = resolve_roles(ws, suite, models, teacher)
    s = get_suite(ws, suite)
    ids, _ = D.select(ws, s["id"], models, decoding)
    k = cache.key(
        "aggregate",
        AGGREGATE_VERSION,
        registry.VERSIONS,
        ids,
        models,
        teacher,
        n_boot,
        cache.items_digest(ws, s["id"]),
        cache.scores_version(ws),
    )
    if use_cache:
        hit = cache.get(ws, k)
        if hit is not None:
            return hit
    records = _compute(ws, ids, models, teacher, n_boot)
    if any(r["metric"] == "pass@1" for r in records):
        task_of = {r[0]: r[1] for r in ws.db.execute("select id, task from items where suite_id = ?", [s["id"]])}
        tasks = sorted(set(task_of.values()))
        groups = [("all", None)] + [(t, t) for t in tasks if t != "all"]
        records.extend(_pass_at_k(ws, suite, models, decoding, task_of, groups, n_boot))
    cache.put(ws, s["id"], k, records)
    return records


def _compute(ws: Workspace, ids: list[int], models: list[str], teacher: str | None, n_boot: int) -> list[dict]:
    rows = select_in(
        ws.db,
        "select g.id, g.model, g.item_id, i.task, length(coalesce(g.output, '')) from generations g"
        " join items i on i.id = g.item_id where g.id in ({in})",
        ids,
    )
    gen = {gid: (model, item_id) for gid, model, item_id, _, _ in rows}
    task_of = {item_id: task for _, _, item_id, task, _ in rows}
    chars = {(model, item_id): n for _, model, item_id, _, n in rows}
    table: dict[str, dict[str, dict[int, float | None]]] = defaultdict(lambda: defaultdict(dict))
    cond, params = teacher_clause(teacher)
    sql = f"select generation_id, metric, value from scores where {cond} and generation_id in ({{in}})"
    for gid, metric, value in select_in(ws.db, sql, ids, before=params):
        model, item_id = gen[gid]
        table[model][metric][item_id] = value
    tasks = sorted(set(task_of.values()))
    groups = [("all", None)] + [(t, t) for t in tasks if t != "all"]
    # Every column first, then all their intervals in one vectorised pass (stats.mean_cis).
    keys: list[tuple[str, str, str]] = []
    columns: list[list] = []
    corr_keys: list[tuple[str, str]] = []
    corr_pairs: list[tuple[list, list]] = []
    for model in models:
        for metric in sorted(table[model]):
            if model == teacher and registry.is_registered(metric) and registry.metric(metric).needs_teacher:
                continue
            col = table[model][metric]
            for name, task in groups:
                keys.append((model, name, metric))
                columns.append([v for iid, v in col.items() if task is None or task_of[iid] == task])
        if teacher and model != teacher and "length_words" in table[model]:
            mine, theirs = table[model]["length_words"], table[teacher].get("length_words", {})
            for name, task in groups:
                common = [
                    i
                    for i in mine
                    if i in theirs
                    and mine[i] is not None
                    and theirs[i] is not None
                    and (task is None or task_of[i] == task)
                ]
                corr_keys.append((model, name))
                corr_pairs.append(([mine[i] for i in common], [theirs[i] for i in common]))
    means = dict(zip(keys, stats.mean_cis(columns, n_boot=n_boot)))
    corrs = dict(zip(corr_keys, stats.pearson_cis(corr_pairs, n_boot=n_boot)))
    records = []
    for model in models:  # the order records always had: model, its metrics, then length_correlation
        for (m, name, metric), iv in means.items():
            if m == model and iv.n:
                records.append(_rec(model, name, metric, iv))
        for (m, name), iv in corrs.items():
            if m == model and iv.value is not None:
                records.append(_rec(model, name, "length_correlation", iv))
        if teacher and model != teacher and "judge_preference" in table[model]:
            prefs = table[model]["judge_preference"]
            for name, task in groups:
                common = [
                    i
                    for i, v in prefs.items()
                    if v is not None
                    and (model, i) in chars
                    and (teacher, i) in chars
                    and (task is None or task_of[i] == task)
                ]
                lc = winrate.length_controlled_winrate(
                    [prefs[i] for i in common],
                    [chars[(model, i)] for i in common],
                    [chars[(teacher, i)] for i in common],
                )
                if lc is not None:
                    # No interval: the GLM's predictions at zero length difference are one number
                    # (AlpacaEval's own standard error of them is 0 for this formula).
                    records.append(
                        _rec(model, name, "judge_preference_lc", stats.Interval(lc, None, None, len(common)))
                    )
    return records


PASS_K = (5, 10)


def _pass_at_k(ws, suite, models, decoding, task_of, groups, n_boot) -> list[dict]:
    """pass@k per model × task from every sample's pass@1 (items with at least k samples)."""
    samples = sample_generations(ws, suite, models, decoding=decoding)
    sql = "select generation_id, value from scores where metric = 'pass@1' and generation_id in ({in})"
    passed = {gid: v for gid, v in select_in(ws.db, sql, [g["generation_id"] for g in samples]) if v is not None}
    counts: dict = defaultdict(lambda: [0, 0])  # (model, item) -> [n, c]
    for g in samples:
        if g["generation_id"] in passed:
            nc = counts[(g["model"], g["item_id"])]
            nc[0] += 1
            nc[1] += int(passed[g["generation_id"]] >= 1.0)
    out = []
    for model in models:
        for k in PASS_K:
            for name, task in groups:
                vals = [
                    M.pass_at_k(n, c, k)
                    for (m, i), (n, c) in counts.items()
                    if m == model and n >= k and (task is None or task_of.get(i) == task)
                ]
                iv = stats.mean_ci(vals, n_boot=n_boot)
                if iv.n:
                    out.append(_rec(model, name, f"pass@{k}", iv))
    return out


def _rec(model, task, metric, iv: stats.Interval) -> dict:
    return {
        "model": model,
        "task": task,
        "metric": metric,
        "value": iv.value,
        "ci_low": iv.low,
        "ci_high": iv.high,
        "n": iv.n,
    }
