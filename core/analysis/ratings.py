"""Blind pairwise rating: a model's output against the teacher's, shown as A/B in a seeded order,
and the share rated equal or better with a Wilson interval."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from core.analysis.marks import default_rater
from core.data.datasets import get_suite
from core.errors import BadInput, NotFound
from core.scores import decodings
from core.scores.outputs import recorded_roles
from core.store.db import select_in
from core.store.workspace import Workspace, now


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (closed form; better than the normal one near 0 or 1)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


@dataclass
class PairTask:
    item_id: int
    prompt: str
    model: str
    teacher: str
    generation_id: int
    teacher_generation_id: int
    a_is_teacher: bool
    seed: int
    a: str
    b: str


def _latest_generations(ws: Workspace, suite_id: int, model: str) -> dict[int, tuple[int, str]]:
    """item_id -> (generation id, output): the model's latest output per item under one decoding
    (core.scores.decodings), as its scores read them; never a mix of two decodings."""
    ids, _ = decodings.select(ws, suite_id, [model])
    out = {}
    for gid, item_id, text in select_in(
        ws.db, "select id, item_id, output from generations where id in ({in}) order by id", ids
    ):
        out[item_id] = (gid, text)
    return out


def pairwise_queue(
    ws: Workspace, suite: str, model: str, *, teacher: str | None = None, seed: int = 0, rater: str | None = None
) -> list[PairTask]:
    """Items not yet rated by `rater`, each with teacher and model shown as A/B in a seeded order.

    The order of items and the A/B sides come from one `random.Random(seed)`, so a session is
    reproducible; each rating records its side, so the result never depends on re-deriving it.
    """
    rater = default_rater() if rater is None else rater
    teacher = teacher or recorded_roles(ws, suite).get("teacher") or ws.config.roles.teacher
    if model == teacher:
        raise BadInput("--model", f"'{model}' is the teacher; pick another model to rate against it")
    s = get_suite(ws, suite)
    mine, theirs = _latest_generations(ws, s["id"], model), _latest_generations(ws, s["id"], teacher)
    if not theirs:
        raise NotFound(
            f"no outputs of the teacher '{teacher}' on suite '{suite}'"
            f" (run `mirage generate --model {teacher} --suite {suite}`)"
        )
    done = {
        (g, t)
        for g, t in ws.db.execute(
            "select generation_id, teacher_generation_id from pairwise_ratings where rater = ?", [rater]
        )
    }
    prompts = dict(ws.db.execute("select id, prompt from items where suite_id = ?", [s["id"]]).fetchall())
    rng = random.Random(seed)
    common = sorted(set(mine) & set(theirs))
    rng.shuffle(common)
    tasks = []
    for item_id in common:
        (gid, out), (tgid, tout) = mine[item_id], theirs[item_id]
        a_is_teacher = rng.random() < 0.5  # drawn for every item so later items keep their sides
        if (gid, tgid) in done:
            continue
        a, b = (tout, out) if a_is_teacher else (out, tout)
        tasks.append(PairTask(item_id, prompts[item_id], model, teacher, gid, tgid, a_is_teacher, seed, a, b))
    return tasks


def record_rating(ws: Workspace, task: PairTask, choice: str, *, rater: str | None = None) -> str:
    """Store the rater's pick ('A', 'B' or 'tie'); returns the outcome for the model."""
    rater = default_rater() if rater is None else rater
    if choice not in ("A", "B", "tie"):
        raise BadInput("choice", f"unknown choice '{choice}' (A, B or tie)")
    if choice == "tie":
        outcome = "tie"
    else:
        outcome = "teacher" if (choice == "A") == task.a_is_teacher else "model"
    ws.db.execute(
        "insert into pairwise_ratings (item_id, model, teacher, generation_id, teacher_generation_id,"
        " a_is_teacher, seed, choice, outcome, rater, created_at) values (?,?,?,?,?,?,?,?,?,?,?)"
        " on conflict (generation_id, teacher_generation_id, rater) do update set"
        " choice = excluded.choice, outcome = excluded.outcome, a_is_teacher = excluded.a_is_teacher,"
        " seed = excluded.seed, created_at = excluded.created_at",
        [
            task.item_id,
            task.model,
            task.teacher,
            task.generation_id,
            task.teacher_generation_id,
            int(task.a_is_teacher),
            task.seed,
            choice,
            outcome,
            rater,
            now(),
        ],
    )
    return outcome


def pairwise_result(
    ws: Workspace, suite: str, model: str, *, teacher: str | None = None, rater: str | None = None
) -> dict:
    """Share of the model's outputs rated equal to or better than the teacher's, with a Wilson 95%."""
    teacher = teacher or recorded_roles(ws, suite).get("teacher") or ws.config.roles.teacher
    s = get_suite(ws, suite)
    sql = (
        "select r.outcome, count(*) from pairwise_ratings r join items i on i.id = r.item_id"
        " where i.suite_id = ? and r.model = ? and r.teacher = ?"
    )
    args: list = [s["id"], model, teacher]
    if rater is not None:
        sql += " and r.rater = ?"
        args.append(rater)
    counts = dict(ws.db.execute(sql + " group by r.outcome", args).fetchall())
    wins, ties, losses = counts.get("model", 0), counts.get("tie", 0), counts.get("teacher", 0)
    n = wins + ties + losses
    lo, hi = wilson_interval(wins + ties, n)
    return {
        "model": model,
        "teacher": teacher,
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "share": (wins + ties) / n if n else None,
        "ci_low": None if n == 0 else lo,
        "ci_high": None if n == 0 else hi,
    }
