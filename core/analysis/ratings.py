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


# The columns that say which pair was shown and how, stored alike in `pairwise_ratings` (a verdict)
# and `rating_pairs` (an issued blind pair): one list and one row builder, so the two cannot drift.
_TASK_COLUMNS = "item_id, model, teacher, generation_id, teacher_generation_id, a_is_teacher, seed"


def _task_row(task: PairTask) -> list:
    """The values of `_TASK_COLUMNS` for a task, in that order."""
    return [
        task.item_id,
        task.model,
        task.teacher,
        task.generation_id,
        task.teacher_generation_id,
        int(task.a_is_teacher),
        task.seed,
    ]


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
        f"insert into pairwise_ratings ({_TASK_COLUMNS}, choice, outcome, rater, created_at)"
        " values (?,?,?,?,?,?,?,?,?,?,?)"
        " on conflict (generation_id, teacher_generation_id, rater) do update set"
        " choice = excluded.choice, outcome = excluded.outcome, a_is_teacher = excluded.a_is_teacher,"
        " seed = excluded.seed, created_at = excluded.created_at",
        [*_task_row(task), choice, outcome, rater, now()],
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


# -- the headless flow: `mirage rate next | submit | skip | results` -------------------------------------
# A pair is issued once with its sides fixed and an opaque id (table `rating_pairs`), so a script or a
# remote rater sees only the prompt and two outputs, and a submit records exactly what was shown.
# The rating itself goes through `record_rating`, into the table the TUI's rating screen writes.

CHOICES = {"a": "A", "b": "B", "tie": "tie", "t": "tie", "=": "tie"}


def rated_models(ws: Workspace, suite: str, models: list[str] | None, teacher: str | None) -> tuple[list[str], str]:
    """(models to rate against the teacher, teacher): by default every model with outputs but the teacher."""
    from core.data.datasets import models_with_outputs

    teacher = teacher or ws.config.roles.teacher
    if not teacher:
        raise BadInput("--teacher", "no teacher: pass --teacher NAME or set [roles] teacher in mirage.toml")
    have = models_with_outputs(ws, suite)
    if models is None:
        models = [m for m in have if m != teacher]
    missing = [m for m in models if m not in have]
    if missing:
        raise NotFound(f"no outputs of {', '.join(missing)} on suite '{suite}' (have: {', '.join(have) or 'none'})")
    if not models:
        raise NotFound(f"no model but the teacher '{teacher}' has outputs on suite '{suite}'")
    return models, teacher


def results(
    ws: Workspace,
    suite: str,
    models: list[str] | None = None,
    *,
    teacher: str | None = None,
    rater: str | None = None,
) -> list[dict]:
    """`pairwise_result` for each model against the teacher: the figures the TUI's agreement modal shows."""
    teacher = teacher or ws.config.roles.teacher
    if not teacher:
        return []
    if models is None:
        models, teacher = rated_models(ws, suite, None, teacher)
    return [pairwise_result(ws, suite, m, teacher=teacher, rater=rater) for m in models if m != teacher]


def _blinded(ws: Workspace, suite: str, row, remaining: int) -> dict:
    """What a rater sees of a pair: no model names, no generation ids, the sides as issued."""
    (pair_id, item_id, _model, _teacher, gid, tgid, a_is_teacher, _seed, rater) = row
    texts = dict(ws.db.execute("select id, output from generations where id in (?, ?)", [gid, tgid]).fetchall())
    idx, prompt = ws.db.execute("select idx, prompt from items where id = ?", [item_id]).fetchone()
    a, b = (texts[tgid], texts[gid]) if a_is_teacher else (texts[gid], texts[tgid])
    return {
        "pair_id": pair_id,
        "suite": suite,
        "item": idx,
        "prompt": prompt,
        "a": a,
        "b": b,
        "rater": rater,
        "remaining": remaining,
    }


_PAIR_COLUMNS = ", ".join(
    "p." + c
    for c in (
        "id",
        "item_id",
        "model",
        "teacher",
        "generation_id",
        "teacher_generation_id",
        "a_is_teacher",
        "seed",
        "rater",
    )
)


def next_pair(
    ws: Workspace,
    suite: str,
    *,
    models: list[str] | None = None,
    teacher: str | None = None,
    seed: int = 0,
    rater: str | None = None,
) -> dict | None:
    """The next blinded pair for `rater` (None when everything is rated or skipped).

    A pair issued and not yet answered is issued again (same id, same sides), so a script that dies
    between `next` and `submit` resumes where it was. New pairs come from `pairwise_queue` (its
    seeded item order and sides), taken from the model with the fewest ratings by this rater so far.
    """
    import secrets

    rater = default_rater() if rater is None else rater
    models, teacher = rated_models(ws, suite, models, teacher)
    s = get_suite(ws, suite)
    in_models = ",".join("?" * len(models))
    # One write transaction: two `next` calls of the same rater at once get the same pair.
    with ws.transaction():
        queues = {m: pairwise_queue(ws, suite, m, teacher=teacher, seed=seed, rater=rater) for m in models}
        issued = {
            (g, t): status
            for g, t, status in ws.db.execute(
                "select generation_id, teacher_generation_id, status from rating_pairs where rater = ?", [rater]
            )
        }
        todo = {
            m: [t for t in q if issued.get((t.generation_id, t.teacher_generation_id)) != "skipped"]
            for m, q in queues.items()
        }
        remaining = sum(len(q) for q in todo.values())
        open_row = ws.db.execute(
            f"select {_PAIR_COLUMNS} from rating_pairs p"
            " join items i on i.id = p.item_id"
            f" where i.suite_id = ? and p.rater = ? and p.teacher = ? and p.model in ({in_models}) and p.status = 'open'"
            " and not exists (select 1 from pairwise_ratings r where r.generation_id = p.generation_id"
            " and r.teacher_generation_id = p.teacher_generation_id and r.rater = p.rater)"
            " order by p.created_at, p.id limit 1",
            [s["id"], rater, teacher, *models],
        ).fetchone()
        if open_row is not None:
            return _blinded(ws, suite, open_row, remaining)
        if remaining == 0:
            return None
        done = dict(
            ws.db.execute(
                f"select r.model, count(*) from pairwise_ratings r join items i on i.id = r.item_id"
                f" where i.suite_id = ? and r.rater = ? and r.teacher = ? and r.model in ({in_models}) group by r.model",
                [s["id"], rater, teacher, *models],
            ).fetchall()
        )
        model = min((m for m in models if todo[m]), key=lambda m: (done.get(m, 0), models.index(m)))
        task = todo[model][0]
        pair_id = "p" + secrets.token_hex(6)
        ws.db.execute(
            f"insert into rating_pairs (id, {_TASK_COLUMNS}, rater, status, created_at)"
            " values (?,?,?,?,?,?,?,?,?,'open',?)"
            " on conflict (generation_id, teacher_generation_id, rater) do update set"
            " id = excluded.id, a_is_teacher = excluded.a_is_teacher, seed = excluded.seed, status = 'open',"
            " created_at = excluded.created_at",
            [pair_id, *_task_row(task), rater, now()],
        )
        row = ws.db.execute(f"select {_PAIR_COLUMNS} from rating_pairs p where p.id = ?", [pair_id]).fetchone()
        return _blinded(ws, suite, row, remaining)


def _pair(ws: Workspace, pair_id: str):
    row = ws.db.execute(f"select {_PAIR_COLUMNS}, p.status from rating_pairs p where p.id = ?", [pair_id]).fetchone()
    if row is None:
        raise NotFound(f"no rating pair '{pair_id}' (get one with `mirage rate next --suite SUITE`)")
    return row


def submit_pair(ws: Workspace, pair_id: str, choice: str, *, replace: bool = False) -> dict:
    """Record the rater's pick for an issued pair ('A', 'B' or 'tie') through `record_rating`.

    Submitting the same verdict again changes nothing (`already_rated`); a different one is refused
    unless `replace`, since a blind judgement overwritten by a second look is no longer blind.
    """
    pick = CHOICES.get(str(choice).strip().lower())
    if pick is None:
        raise BadInput("choice", f"unknown choice '{choice}' (A, B or tie)")
    (pid, item_id, model, teacher, gid, tgid, a_is_teacher, seed, rater, _status) = _pair(ws, pair_id)
    if pick == "tie":
        outcome = "tie"
    else:
        outcome = "teacher" if (pick == "A") == bool(a_is_teacher) else "model"
    prior = ws.db.execute(
        "select outcome from pairwise_ratings where generation_id = ? and teacher_generation_id = ? and rater = ?",
        [gid, tgid, rater],
    ).fetchone()
    out = {"pair_id": pid, "choice": pick, "rater": rater, "already_rated": prior is not None}
    if prior is not None and prior[0] == outcome:
        ws.db.execute("update rating_pairs set status = 'rated' where id = ?", [pid])
        return out
    if prior is not None and not replace:
        raise BadInput(
            "choice",
            f"pair {pid} is already rated with a different verdict; pass --replace to change it",
        )
    prompt = ws.db.execute("select prompt from items where id = ?", [item_id]).fetchone()[0]
    task = PairTask(item_id, prompt, model, teacher, gid, tgid, bool(a_is_teacher), seed, "", "")
    with ws.transaction():
        record_rating(ws, task, pick, rater=rater)
        ws.db.execute("update rating_pairs set status = 'rated' where id = ?", [pid])
    return out


def skip_pair(ws: Workspace, pair_id: str) -> dict:
    """Leave an issued pair unrated; `next_pair` does not offer it again."""
    row = _pair(ws, pair_id)
    ws.db.execute("update rating_pairs set status = 'skipped' where id = ? and status = 'open'", [row[0]])
    return {"pair_id": row[0], "skipped": True}
