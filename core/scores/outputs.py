"""The outputs a suite's scores are about, and their stored scores read back.

Which output of a model on an item: its latest generation (highest id), whatever the decoding.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from core.data.datasets import get_suite, models_with_outputs
from core.errors import NotFound
from core.store.db import select_in
from core.store.workspace import Workspace


def latest_generations(ws: Workspace, suite: str, models: Iterable[str]) -> list[dict]:
    """The latest generation of each model on each item of the suite, with the item's fields."""
    s = get_suite(ws, suite)
    models = list(models)
    if not models:
        return []
    ph = ",".join("?" * len(models))
    rows = ws.db.query(
        f"""select g.id as generation_id, g.model, g.output, g.item_id, i.idx, i.task, i.prompt as item_prompt,
                   i.gold, i.choices, i.tests, i.entry_point, i.meta as item_meta
            from generations g join items i on i.id = g.item_id
            where g.id in (select max(g2.id) from generations g2 join items i2 on i2.id = g2.item_id
                           where i2.suite_id = ? and g2.model in ({ph}) group by g2.item_id, g2.model)
            order by i.idx, g.model""",
        [s["id"], *models],
    )
    out = []
    for r in rows:
        r = dict(r)
        r["gold"] = json.loads(r["gold"] or "[]")
        r["choices"] = json.loads(r["choices"]) if r["choices"] else None
        r["item_meta"] = json.loads(r["item_meta"] or "{}")
        out.append(r)
    return out


def sample_generations(ws: Workspace, suite: str, models: Iterable[str]) -> list[dict]:
    """Every sample behind each latest generation: the generations of the same model on the same
    item with the same fingerprint, prompt and decoding but for the sampling seed (`mirage
    generate --samples N`). A greedy output is its own only sample. Rows as latest_generations'."""
    latest = latest_generations(ws, suite, models)
    if not latest:
        return []
    by_id = {g["generation_id"]: g for g in latest}
    sql = (
        "select g.id, g.model, g.item_id, g.fingerprint, g.prompt, g.decoding, g.output from generations g"
        " where g.item_id in ({in})"
    )
    rows = list(select_in(ws.db, sql, sorted({g["item_id"] for g in latest})))
    info = {r[0]: r for r in rows}

    def family(gid):
        _, model, item_id, fp, prompt, decoding, _ = info[gid]
        d = json.loads(decoding or "{}")
        d.pop("seed", None)
        return model, item_id, fp, prompt, json.dumps(d, sort_keys=True)

    latest_of = {family(gid): by_id[gid] for gid in by_id if gid in info}
    out = []
    for r in rows:
        g = latest_of.get(family(r[0]))
        if g is None:
            continue
        out.append(g if r[0] == g["generation_id"] else {**g, "generation_id": r[0], "output": r[6]})
    out.sort(key=lambda g: (g["idx"], g["model"], g["generation_id"]))
    return out


def resolve_roles(
    ws: Workspace, suite: str, models: list[str] | None = None, teacher: str | None = None
) -> tuple[list[str], str | None]:
    """(models to score, teacher): explicit names, else every model with outputs on the suite and
    the configured teacher role if it has outputs there."""
    have = models_with_outputs(ws, suite)
    if not have:
        raise NotFound(
            f"no outputs on suite '{suite}' yet: run `mirage generate --model NAME --suite {suite}`"
            f" or `mirage import outputs FILE --suite {suite} --model NAME`"
        )
    if models:
        missing = [m for m in models if m not in have]
        if missing:
            raise NotFound(
                f"no outputs of {', '.join(missing)} on suite '{suite}'"
                f" (have: {', '.join(have) or 'none'}; run `mirage generate`)"
            )
    else:
        models = list(have)
    if teacher is None:
        teacher = ws.config.roles.teacher if ws.config.roles.teacher in have else None
    elif teacher not in have:
        raise NotFound(f"no outputs of teacher '{teacher}' on suite '{suite}' (have: {', '.join(have) or 'none'})")
    if teacher and teacher not in models:
        models = models + [teacher]
    return models, teacher


# -- stored scores ------------------------------------------------------------------------------
def score_rows(ws: Workspace, suite: str, models: list[str]) -> tuple[list[dict], dict]:
    """The latest generations of `models` and {generation_id: {metric: value}} of their scores."""
    gens = latest_generations(ws, suite, models)
    by_gid = {g["generation_id"]: g for g in gens}
    values: dict[int, dict[str, float | None]] = defaultdict(dict)
    sql = "select generation_id, metric, value from scores where generation_id in ({in})"
    for gid, metric, value in select_in(ws.db, sql, list(by_gid)):
        values[gid][metric] = value
    return gens, values


def item_scores(
    ws: Workspace, suite: str, models: list[str] | None = None
) -> dict[int, dict[str, dict[str, float | None]]]:
    """{item_id: {model: {metric: value}}} for the latest output of each model (stored scores only)."""
    models = models or models_with_outputs(ws, suite)
    gens, values = score_rows(ws, suite, models)
    out: dict[int, dict] = defaultdict(dict)
    for g in gens:
        out[g["item_id"]][g["model"]] = dict(values.get(g["generation_id"], {}))
    return dict(out)


def score_table(gens, values) -> dict:
    """model -> metric -> {item_id: value} and item_id -> task."""
    table: dict[str, dict[str, dict[int, float | None]]] = defaultdict(lambda: defaultdict(dict))
    for g in gens:
        for metric, v in values.get(g["generation_id"], {}).items():
            table[g["model"]][metric][g["item_id"]] = v
    return table
