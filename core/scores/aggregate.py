"""Stored scores as per model × task × metric means with bootstrap 95% intervals (`aggregate`)."""

from __future__ import annotations

from core.api import registry
from core.scores import stats
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
    teacher's output lengths in words, with a bootstrap interval over items.
    """
    models, teacher = resolve_roles(ws, suite, models, teacher)
    gens, values = score_rows(ws, suite, models)
    task_of = {g["item_id"]: g["task"] for g in gens}
    tasks = sorted(set(task_of.values()))
    groups = [("all", None)] + [(t, t) for t in tasks if t != "all"]
    table = score_table(gens, values)
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
