"""Analyses over stored scores: paired comparison of two models, gap closed, and the outputs that
are convincing but wrong. The report and the Compare / Analysis screens read them.
"""

from __future__ import annotations

from core.api.suites import CONVINCING_OVERLAP, suite_kind
from core.data.datasets import get_suite
from core.errors import NotFound
from core.scores import stats
from core.scores.outputs import resolve_roles, score_rows, score_table
from core.store.workspace import Workspace


def _verdict_metric(ws: Workspace, suite: str, table: dict, models: list[str]):
    """The suite's kind and the metric its verdict is read from, given the scores in `table`."""
    kind = suite_kind(get_suite(ws, suite)["kind"])
    present = {m for x in models for m in table[x]}
    return kind, kind.verdict_metric(present)


def _aligned(table, models, metric, items) -> list[list[float]]:
    return [[table[m][metric][i] for i in items] for m in models]


def compare(ws: Workspace, suite: str, a: str, b: str, metric: str | None = None) -> dict:
    """Paired comparison of two models on the items both answered: mean difference (b − a) with a
    paired bootstrap interval, exact McNemar for 0/1 metrics, and wrong→right transitions a→b."""
    gens, values = score_rows(ws, suite, [a, b])
    table = score_table(gens, values)
    metric = metric or _verdict_metric(ws, suite, table, [a, b])[1]
    if metric is None:
        raise NotFound(f"no scores on suite '{suite}': run `mirage score --suite {suite}` first")
    items = sorted(
        set(i for i, v in table[a][metric].items() if v is not None)
        & set(i for i, v in table[b][metric].items() if v is not None)
    )
    va, vb = _aligned(table, [a, b], metric, items) if items else ([], [])
    out = {"a": a, "b": b, "metric": metric, "n": len(items), "paired_bootstrap": stats.paired_bootstrap(vb, va)}
    if items and all(v in (0.0, 1.0) for v in va + vb):
        out["mcnemar"] = stats.mcnemar_exact(vb, va)
        out["transitions"] = stats.transitions(va, vb)
    return out


def gap_closed(
    ws: Workspace,
    suite: str,
    *,
    base: str,
    imitation: str,
    teacher: str,
    metric: str | None = None,
    n_boot: int = stats.N_BOOT,
) -> list[dict]:
    """Per task (and "all"): (imitation − base) / (teacher − base) on items all three answered,
    with a paired bootstrap interval; value None (n/a, with its `reason`) where teacher − base's
    interval includes 0, or where the teacher is below the base (`teacher_below_base`)."""
    gens, values = score_rows(ws, suite, [base, imitation, teacher], teacher=teacher)
    table = score_table(gens, values)
    metric = metric or _verdict_metric(ws, suite, table, [base, imitation, teacher])[1]
    if metric is None:
        return []
    task_of = {g["item_id"]: g["task"] for g in gens}
    common = set(task_of)
    for m in (base, imitation, teacher):
        common &= {i for i, v in table[m][metric].items() if v is not None}
    out = []
    for task in ["all"] + sorted({task_of[i] for i in common} - {"all"}):
        items = sorted(i for i in common if task == "all" or task_of[i] == task)
        b, i_, t = _aligned(table, [base, imitation, teacher], metric, items)
        g = stats.gap_closed(b, i_, t, n_boot=n_boot)
        out.append(
            {
                "task": task,
                "metric": metric,
                "base_model": base,
                "imitation_model": imitation,
                "teacher_model": teacher,
                **g,
            }
        )
    return out


def gap_vs_support(gaps: list[dict], support: dict[str, float]) -> dict:
    """Spearman's rho between gap closed and coverage support over tasks that have both."""
    pairs = [
        (g["value"], support[g["task"]])
        for g in gaps
        if g["task"] != "all" and g["value"] is not None and g["task"] in support
    ]
    rho = stats.spearman([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 3 else None
    return {"spearman": rho, "tasks": len(pairs)}


def convincing_but_wrong(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    overlap: float = CONVINCING_OVERLAP,
) -> list[dict]:
    """Outputs whose style is close to the teacher's while their answer is wrong by the suite's
    primary metric (`SuiteKind.convincing_but_wrong` says what that means), overlap highest first."""
    models, teacher = resolve_roles(ws, suite, models, teacher)
    gens, values = score_rows(ws, suite, models, teacher=teacher)
    table = score_table(gens, values)
    kind, metric = _verdict_metric(ws, suite, table, models)
    if metric is None or teacher is None:
        return []
    rows = []
    for g in gens:
        v = values.get(g["generation_id"], {})
        if g["model"] == teacher or not kind.convincing_but_wrong(v, metric=metric, overlap=overlap):
            continue
        rows.append(
            {
                "item_id": g["item_id"],
                "generation_id": g["generation_id"],
                "model": g["model"],
                "task": g["task"],
                "prompt": g["item_prompt"],
                "output": g["output"],
                "gold": g["gold"],
                "metric": metric,
                "value": v.get(metric),
                "unigram_overlap": v["unigram_overlap"],
                "list_when_teacher_lists": v.get("list_when_teacher_lists"),
                "embedding_similarity": v.get("embedding_similarity"),
            }
        )
    rows.sort(key=lambda r: -r["unigram_overlap"])
    return rows
