"""Stored scores as per model × task × metric means with bootstrap 95% intervals (`aggregate`)."""

from __future__ import annotations

from collections import defaultdict

from core.api import metrics as M
from core.api import registry
from core.scores import stats, winrate
from core.scores.outputs import resolve_roles, sample_generations, score_rows, score_table
from core.store.db import select_in
from core.store.workspace import Workspace


def aggregate(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    n_boot: int = stats.N_BOOT,
) -> list[dict]:
    """Records {model, task, metric, value, ci_low, ci_high, n}, task "all" for the whole suite.

    Means of per-output scores with bootstrap 95% intervals (nulls left out: not applicable or
    not computable); `length_correlation` is Pearson's r over items between the model's and the
    teacher's output lengths in words, with a bootstrap interval over items; `judge_preference_lc`
    is AlpacaEval 2's length-controlled win rate over the items the judge compared (at least 5).
    """
    models, teacher = resolve_roles(ws, suite, models, teacher)
    gens, values = score_rows(ws, suite, models)
    task_of = {g["item_id"]: g["task"] for g in gens}
    tasks = sorted(set(task_of.values()))
    groups = [("all", None)] + [(t, t) for t in tasks if t != "all"]
    table = score_table(gens, values)
    chars = {(g["model"], g["item_id"]): len(g["output"] or "") for g in gens}
    records = []
    for model in models:
        for metric in sorted(table[model]):
            if model == teacher and registry.is_registered(metric) and registry.metric(metric).needs_teacher:
                continue
            col = table[model][metric]
            for name, task in groups:
                vals = [v for iid, v in col.items() if task is None or task_of[iid] == task]
                iv = stats.mean_ci(vals, n_boot=n_boot)
                if iv.n == 0:
                    continue
                records.append(_rec(model, name, metric, iv))
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
                iv = stats.pearson_ci([mine[i] for i in common], [theirs[i] for i in common], n_boot=n_boot)
                if iv.value is not None:
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
    if any(r["metric"] == "pass@1" for r in records):
        records.extend(_pass_at_k(ws, suite, models, task_of, groups, n_boot))
    return records


PASS_K = (5, 10)


def _pass_at_k(ws, suite, models, task_of, groups, n_boot) -> list[dict]:
    """pass@k per model × task from every sample's pass@1 (items with at least k samples)."""
    samples = sample_generations(ws, suite, models)
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
