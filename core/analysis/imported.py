"""Other tools' per-sample scores (`mirage import results`) beside mirage's own on the same outputs:
per model × task means with bootstrap intervals, and how often each agrees with mirage's
counterpart metric item by item (agreement and Cohen's kappa, both binarised at the metric's
verdict threshold)."""

from __future__ import annotations

from collections import defaultdict

from core.analysis.marks import cohen_kappa
from core.api import registry
from core.api.suites import suite_kind
from core.data.datasets import get_suite
from core.scores import stats
from core.scores.outputs import score_rows
from core.store.db import select_in
from core.store.workspace import Workspace

# A tool's metric (the part after `tool:`, before lm-eval's `,filter`) -> mirage's metrics that
# measure the same thing, in the order they are compared. Whichever are registered for the
# suite's kind and scored are compared; `exact_match_official` is lm-eval's own normalisation.
COUNTERPARTS: dict[str, tuple[str, ...]] = {
    "exact_match": ("exact_match", "exact_match_official"),
    "em": ("exact_match", "exact_match_official"),
    "exact": ("exact_match", "exact_match_official"),
    "match": ("exact_match", "exact_match_official"),
    "includes": ("contains",),
    "contains": ("contains",),
    "icontains": ("contains",),
    "f1": ("f1",),
    "acc": ("mc_accuracy", "mc_accuracy_loglik"),
    "acc_norm": ("mc_accuracy", "mc_accuracy_loglik"),
    "accuracy": ("mc_accuracy", "exact_match"),
    "choice": ("mc_accuracy",),
    "pass@1": ("pass@1",),
    "preference": ("judge_preference",),
}
PRIMARY = ("pass", "equals")  # a test's pass/fail: compared with the suite kind's primary metric


def tool_of(metric: str) -> str:
    return metric.split(":", 1)[0]


def base_name(metric: str) -> str:
    """`lm_eval:exact_match,strict-match` -> `exact_match`; `inspect:match` -> `match`."""
    return metric.split(":", 1)[-1].split(",", 1)[0].split(".", 1)[0]


def counterparts(metric: str, kind: str) -> list[str]:
    base = base_name(metric)
    names = list(COUNTERPARTS.get(base, ()))
    if base in PRIMARY:
        names = [suite_kind(kind).primary]
    return [m for m in names if registry.is_registered(m) and kind in registry.metric(m).kinds]


def imported_values(ws: Workspace, gen_ids: list[int]) -> dict[int, dict[str, float | None]]:
    """{generation_id: {tool:metric: value}} of the imported scores of these outputs."""
    out: dict[int, dict[str, float | None]] = defaultdict(dict)
    sql = "select generation_id, metric, value from imported_scores where generation_id in ({in})"
    for gid, metric, value in select_in(ws.db, sql, gen_ids):
        out[gid][metric] = value
    return dict(out)


def _binary(v: float, metric: str) -> int:
    at = registry.metric(metric).correct_at if registry.is_registered(metric) else 0.5
    return 1 if v >= at else 0


def agreement(tool: list[float], mine: list[float], mirage_metric: str) -> dict:
    """Item-level agreement of two paired score lists (tool's at 0.5, mirage's at its verdict threshold)."""
    a = [1 if v >= 0.5 else 0 for v in tool]
    b = [_binary(v, mirage_metric) for v in mine]
    n = len(a)
    return {
        "n_both": n,
        "agreement": sum(x == y for x, y in zip(a, b)) / n if n else None,
        "kappa": cohen_kappa(a, b) if n else None,
        "both_right": sum(x and y for x, y in zip(a, b)),
        "only_tool_right": sum(x and not y for x, y in zip(a, b)),
        "only_mirage_right": sum(y and not x for x, y in zip(a, b)),
    }


def compare_imported(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    decoding: dict | str | None = None,
    n_boot: int = stats.N_BOOT,
) -> list[dict]:
    """Records {model, task, metric, value, ci_low, ci_high, n} (the `score --json` shape) for
    every imported metric, each with `source: "imported"`, the `tool`, and its comparison with
    mirage's counterpart on the same outputs: `compared_with`, `mirage_value` (mirage's mean on the
    items both scored), `agreement`, `kappa`, `n_both`; `agreements` lists every counterpart."""
    s = get_suite(ws, suite)
    kind = s["kind"]
    # Only the models that have imported scores: every output and score of the others would be
    # read to find nothing to compare.
    with_imported = [
        r[0]
        for r in ws.db.execute(
            "select distinct g.model from imported_scores x join generations g on g.id = x.generation_id"
            " join items i on i.id = g.item_id where i.suite_id = ? order by g.model",
            [s["id"]],
        )
    ]
    if models is not None:
        keep = set(with_imported)
        with_imported = [m for m in models if m in keep]
    models = with_imported
    if not models:
        return []
    gens, mine = score_rows(ws, suite, models, decoding=decoding)
    theirs = imported_values(ws, [g["generation_id"] for g in gens])
    task_of = {g["item_id"]: g["task"] for g in gens}
    groups = [("all", None)] + [(t, t) for t in sorted(set(task_of.values())) if t != "all"]
    by_model: dict[str, list[dict]] = defaultdict(list)
    for g in gens:
        if g["generation_id"] in theirs:
            by_model[g["model"]].append(g)
    records = []
    for model in models:
        rows = by_model[model]
        metrics = sorted({m for g in rows for m in theirs[g["generation_id"]]})
        for metric in metrics:
            for name, task in groups:
                sel = [g for g in rows if task is None or g["task"] == task]
                vals = [theirs[g["generation_id"]].get(metric) for g in sel]
                vals = [v for v in vals if v is not None]
                iv = stats.mean_ci(vals, n_boot=n_boot)
                if iv.n == 0:
                    continue
                rec = {
                    "model": model,
                    "task": name,
                    "metric": metric,
                    "value": iv.value,
                    "ci_low": iv.low,
                    "ci_high": iv.high,
                    "n": iv.n,
                    "source": "imported",
                    "tool": tool_of(metric),
                    "compared_with": None,
                    "mirage_value": None,
                    "agreement": None,
                    "kappa": None,
                    "n_both": 0,
                    "agreements": [],
                }
                for cm in counterparts(metric, kind):
                    pairs = [
                        (theirs[g["generation_id"]][metric], mine[g["generation_id"]][cm])
                        for g in sel
                        if theirs[g["generation_id"]].get(metric) is not None
                        and mine.get(g["generation_id"], {}).get(cm) is not None
                    ]
                    if not pairs:
                        continue
                    ag = agreement([p[0] for p in pairs], [p[1] for p in pairs], cm)
                    ag = {
                        "metric": cm,
                        "mirage_value": sum(p[1] for p in pairs) / len(pairs),
                        "tool_value": sum(p[0] for p in pairs) / len(pairs),
                        **ag,
                    }
                    rec["agreements"].append(ag)
                if rec["agreements"]:
                    first = rec["agreements"][0]
                    rec.update(
                        compared_with=first["metric"],
                        mirage_value=first["mirage_value"],
                        agreement=first["agreement"],
                        kappa=first["kappa"],
                        n_both=first["n_both"],
                    )
                records.append(rec)
    return records
