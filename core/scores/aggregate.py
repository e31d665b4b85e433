"""Stored scores as per model × task × metric means with bootstrap 95% intervals (`aggregate`)."""

from __future__ import annotations

from core.api import registry
from core.scores import stats, winrate
from core.scores.outputs import resolve_roles, score_rows, score_table
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
    return records


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
