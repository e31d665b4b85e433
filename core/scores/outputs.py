"""The outputs a suite's scores are about, and their stored scores read back.

Which output of a model on an item: the latest generation under the one decoding the model's
scores read (core.scores.decodings: never a mix of two). Which teacher: style scores are stored
with the teacher they were measured against, and read back for the teacher in use only; the roles
a suite was last scored with are recorded (`score_roles`), so a later report shows the same ones.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from core.data.datasets import get_suite, models_with_outputs
from core.errors import NotFound
from core.scores import decodings as D
from core.store.db import select_in
from core.store.workspace import Workspace, dumps, now


def latest_generations(
    ws: Workspace, suite: str, models: Iterable[str], *, decoding: dict | str | None = None
) -> list[dict]:
    """The latest generation of each model on each item of the suite under one decoding per model
    (`decodings.select`), with the item's fields and the generation's `decoding`."""
    s = get_suite(ws, suite)
    ids, _ = D.select(ws, s["id"], models, decoding)
    if not ids:
        return []
    rows = select_in(
        ws.db,
        """select g.id as generation_id, g.model, g.output, g.item_id, i.idx, i.task, i.prompt as item_prompt,
                  i.gold, i.choices, i.tests, i.entry_point, i.meta as item_meta, g.decoding
           from generations g join items i on i.id = g.item_id where g.id in ({in})""",
        ids,
    )
    keys = ["generation_id", "model", "output", "item_id", "idx", "task", "item_prompt", "gold", "choices"]
    keys += ["tests", "entry_point", "item_meta", "decoding"]
    out = []
    for row in rows:
        r = dict(zip(keys, row))
        r["gold"] = json.loads(r["gold"] or "[]")
        r["choices"] = json.loads(r["choices"]) if r["choices"] else None
        r["item_meta"] = json.loads(r["item_meta"] or "{}")
        r["decoding"] = json.loads(r["decoding"] or "{}")
        out.append(r)
    out.sort(key=lambda r: (r["idx"], r["model"]))
    return out


# -- the roles a suite was scored with -------------------------------------------------------------
def recorded_roles(ws: Workspace, suite: str) -> dict:
    """{teacher, base, decodings: {model: decoding}} the suite was last scored with ({} if never)."""
    row = ws.db.execute(
        "select r.teacher, r.base, r.decodings from score_roles r join suites s on s.id = r.suite_id where s.name = ?",
        [suite],
    ).fetchone()
    if row is None:
        return {}
    return {"teacher": row[0], "base": row[1], "decodings": json.loads(row[2] or "{}")}


def record_roles(ws: Workspace, suite: str, *, teacher: str | None, base: str | None, decodings: dict) -> None:
    s = get_suite(ws, suite)
    with ws.transaction():
        ws.db.execute(
            "insert or replace into score_roles (suite_id, teacher, base, decodings, updated_at) values (?, ?, ?, ?, ?)",
            [s["id"], teacher, base, dumps(decodings), now()],
        )


def sample_generations(
    ws: Workspace, suite: str, models: Iterable[str], *, decoding: dict | str | None = None
) -> list[dict]:
    """Every sample behind each latest generation: the generations of the same model on the same
    item with the same fingerprint, prompt and decoding but for the sampling seed (`mirage
    generate --samples N`). A greedy output is its own only sample. Rows as latest_generations'."""
    latest = latest_generations(ws, suite, models, decoding=decoding)
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
    """(models to score, teacher): explicit names, else every model with outputs on the suite; the
    teacher is the one named, else the one the suite was last scored with, else the configured
    teacher role, each only if it has outputs there."""
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
        for candidate in (recorded_roles(ws, suite).get("teacher"), ws.config.roles.teacher):
            if candidate and candidate in have:
                teacher = candidate
                break
    elif teacher not in have:
        raise NotFound(f"no outputs of teacher '{teacher}' on suite '{suite}' (have: {', '.join(have) or 'none'})")
    if teacher and teacher not in models:
        models = models + [teacher]
    return models, teacher


def resolve_base(ws: Workspace, suite: str, models: list[str], base: str | None = None) -> str | None:
    """The base model: the one named, else the one the suite was last scored with, else roles.base."""
    if base:
        if base not in models_with_outputs(ws, suite):
            raise NotFound(f"no outputs of base '{base}' on suite '{suite}'")
        return base
    for candidate in (recorded_roles(ws, suite).get("base"), ws.config.roles.base):
        if candidate and candidate in models:
            return candidate
    return None


# -- stored scores ------------------------------------------------------------------------------
def teacher_clause(teacher: str | None, column: str = "teacher") -> tuple[str, list]:
    """SQL keeping the scores that belong with `teacher`: those measured against it, and those
    measured against no teacher (factuality, the output's own style)."""
    if teacher is None:
        return f"{column} is null", []
    return f"({column} is null or {column} = ?)", [teacher]


def score_rows(
    ws: Workspace,
    suite: str,
    models: list[str],
    *,
    teacher: str | None = None,
    decoding: dict | str | None = None,
) -> tuple[list[dict], dict]:
    """The latest generations of `models` and {generation_id: {metric: value}} of their scores
    (style scores only those measured against `teacher`)."""
    gens = latest_generations(ws, suite, models, decoding=decoding)
    by_gid = {g["generation_id"]: g for g in gens}
    values: dict[int, dict[str, float | None]] = defaultdict(dict)
    cond, params = teacher_clause(teacher)
    sql = f"select generation_id, metric, value from scores where {cond} and generation_id in ({{in}})"
    for gid, metric, value in select_in(ws.db, sql, list(by_gid), before=params):
        values[gid][metric] = value
    return gens, values


def item_scores(
    ws: Workspace, suite: str, models: list[str] | None = None, *, teacher: str | None = None
) -> dict[int, dict[str, dict[str, float | None]]]:
    """{item_id: {model: {metric: value}}} for the latest output of each model (stored scores only)."""
    models = models or models_with_outputs(ws, suite)
    if teacher is None:
        teacher = recorded_roles(ws, suite).get("teacher")
    gens, values = score_rows(ws, suite, models, teacher=teacher)
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
