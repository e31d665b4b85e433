"""Importing evaluation suites: detecting the kind (qa, mc, code, prompts), normalising items, publishing."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from core.api import suites
from core.api.registry import SUITE_KIND_NAMES
from core.data.ingest.errors import bad, results_hint
from core.data.ingest.sources import Source, good_records
from core.data.ingest.staging import BATCH, BadRows, Staging, insert_indexed, parse_meta
from core.errors import BadInput, FieldError, type_name
from core.runtime.progress import Progress, Work, check_cancel
from core.store.workspace import Workspace, dumps, now

_TASK_FIELDS = ("task", "category", "subject", "dataset")


def _upstream_key(rec: dict) -> str | None:
    for f in ("task_id", "id", "key", "qid"):
        v = rec.get(f)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            return str(v)
    return None


def _task(rec: dict, default: str) -> str:
    for f in _TASK_FIELDS:
        v = rec.get(f)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return default


def _with_answer_field(rec: Any, answer_field: str | None) -> Any:
    """The record with its gold read from `answer_field` (`--answer-field`), as the field `answer`."""
    if not answer_field or not isinstance(rec, dict):
        return rec
    if answer_field not in rec:
        raise FieldError(answer_field, "missing (named by --answer-field)")
    rec = {k: v for k, v in rec.items() if k != "answers"}
    rec["answer"] = rec[answer_field]
    return rec


def normalise_item(rec: Any, fmt: str, task: str | None, default_task: str) -> dict:
    """An items row (without suite/idx) from one record; raises FieldError on a bad field.

    What the fields of a record mean is the suite kind's (`core.api.suites`); the upstream key and
    the task label are the same for every kind.
    """
    fields = suites.read_item(fmt, rec)
    return {"key": _upstream_key(rec), "task": task or _task(rec, default_task), **fields}


def item_hash(item: dict) -> str:
    """What an item is deduplicated by within its suite: prompt, gold, choices, tests and task."""
    key = dumps([item["prompt"], item["gold"], item["choices"], item["tests"], item["task"]])
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


_ITEM_INSERT = (
    "insert or ignore into items (suite_id, idx, key, prompt, task, gold, choices, tests, entry_point,"
    " content_hash, meta) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def import_suite(
    ws: Workspace,
    path: str | os.PathLike,
    name: str,
    *,
    fmt: str = "auto",
    task: str | None = None,
    skip_bad: bool = False,
    answer_field: str | None = None,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Import an evaluation suite (QA, multiple choice, code with tests, plain prompts).

    `answer_field`: the record field that holds the QA gold (default `answer` / `answers`).

    Items carry a task label: `task` if given, else the record's task/category/subject/dataset
    field, else the suite's name. Re-importing the same file changes nothing; another file into
    the same suite appends its new items.
    """
    if fmt != "auto" and fmt not in SUITE_KIND_NAMES:
        raise BadInput("--format", f"unknown format '{fmt}' (expected auto, {', '.join(SUITE_KIND_NAMES)})")
    if not name or not name.strip():
        raise BadInput("--name", "a suite needs a name")
    src = Source(path)
    kind = src.kind()
    if kind == "txt":
        if fmt not in ("auto", "prompts"):
            raise BadInput(src.label, f"a .txt file holds one prompt per line; it cannot be a '{fmt}' suite")
        fmt = "prompts"
    stage = Staging(ws, "suites", name, None if fmt == "auto" else fmt)
    badrows = BadRows(ws, skip_bad, "suite", name)
    target = stage.target
    target_meta = parse_meta(target["meta"]) if target else {}
    stats = {"read": 0, "imported": 0, "duplicates": 0}
    suite_fmt = None if fmt == "auto" else fmt
    try:
        batch: list[tuple] = []
        for loc, rec in good_records(src, kind, badrows):
            try:
                rec = _with_answer_field(rec, answer_field)
            except FieldError as fe:
                badrows(bad(src.label, fe.reason, loc, fe.field), rec)
                continue
            if suite_fmt is None:
                suite_fmt = suites.detect_kind(rec)
                if suite_fmt is None:
                    keys = ", ".join(list(rec)[:8]) if isinstance(rec, dict) else type_name(rec)
                    raise bad(
                        src.label,
                        f"unknown format: first record has {keys or 'no fields'}; expected"
                        " question + answer (qa), question + A-D/choices + answer (mc),"
                        " prompt + test + entry_point (code) or instruction/prompt/question"
                        " (prompts); or pass --format" + results_hint(rec),
                        loc,
                    )
            try:
                item = normalise_item(rec, suite_fmt, task, name)
            except FieldError as fe:
                badrows(bad(src.label, fe.reason, loc, fe.field), rec)
                continue
            stats["read"] += 1
            gold, choices = dumps(item["gold"]), dumps(item["choices"]) if item["choices"] is not None else None
            content_hash = item_hash(item)
            batch.append(
                (
                    stage.id,
                    stats["read"] - 1,
                    item["key"],
                    item["prompt"],
                    item["task"],
                    gold,
                    choices,
                    item["tests"],
                    item["entry_point"],
                    content_hash,
                    dumps(item["meta"]),
                )
            )
            if len(batch) >= BATCH:
                check_cancel(cancel)
                _flush_items(ws, stage.id, batch, stats, target)
                yield Progress(src.position(), src.size or 1, f"{stats['imported']:,} items", unit="bytes")
        _flush_items(ws, stage.id, batch, stats, target)
        if stats["read"] == 0:  # a suite with no items is refused, --skip-bad or not
            raise BadInput(src.label, "no records" if not badrows.n else "no good records")
        digest = src.digest()
        unchanged = stats["imported"] == 0  # every item read is already in the suite
        if unchanged and target is not None:
            stage.discard()
        else:
            if target is not None and target["kind"] != suite_fmt:
                raise BadInput(src.label, f"suite '{name}' holds {target['kind']} items; this file is {suite_fmt}")
            file_meta = {
                "name": src.path.name,
                "path": str(src.path.resolve()),
                "sha256": digest,
                "format": suite_fmt,
                "rows": stats["read"],
                "imported": stats["imported"],
            }
            _publish_suite(ws, stage, name, suite_fmt, kind, target, target_meta, file_meta, stats)
            stage.done()
            unchanged = False
    except BaseException:
        stage.discard()
        badrows.close()
        raise
    badrows.close()
    n_items, n_tasks = ws.db.execute(
        "select count(i.id), count(distinct i.task) from suites s left join items i on i.suite_id = s.id"
        " where s.name = ? and s.status = 'ready'",
        [name],
    ).fetchone()
    return {
        "suite": name,
        "kind": suite_fmt,
        "file": src.path.name,
        "read": stats["read"],
        "imported": stats["imported"],
        "duplicates": stats["duplicates"],
        "skipped_bad": badrows.n,
        "report": str(badrows.path) if badrows.path else None,
        "unchanged": unchanged,
        "items": n_items,
        "tasks": n_tasks,
    }


def _flush_items(ws, stage_id: int, batch: list[tuple], stats: dict, target: dict | None) -> None:
    if not batch:
        return
    rows = batch
    if target is not None:
        marks = ",".join("?" * len(rows))
        have = {
            h
            for (h,) in ws.db.execute(
                f"select content_hash from items where suite_id = ? and content_hash in ({marks})",
                [target["id"], *[r[9] for r in rows]],
            )
        }
        rows = [r for r in rows if r[9] not in have]
    inserted = insert_indexed(ws, "suites", stage_id, _ITEM_INSERT, rows)
    stats["imported"] += inserted
    stats["duplicates"] += len(batch) - inserted
    batch.clear()


def _publish_suite(ws, stage: Staging, name, fmt, file_kind, target, target_meta, file_meta, stats) -> None:
    with ws.transaction():
        # Look again: the suite may have been created or deleted by someone else meanwhile.
        rows = list(ws.db.query("select * from suites where name = ? and status = 'ready'", [name]))
        target, target_meta = (dict(rows[0]), parse_meta(rows[0]["meta"])) if rows else (None, {})
        if target is None:
            meta = {"duplicates": stats["duplicates"], "files": [file_meta]}
            ws.db.execute(
                "update suites set name = ?, status = 'ready', kind = ?, format = ?, source = ?, meta = ?,"
                " created_at = ? where id = ?",
                [name, fmt, file_kind, file_meta["name"], dumps(meta), now(), stage.id],
            )
        else:
            _drop_published_duplicates(ws, stage.id, target["id"], stats, file_meta)
            offset = ws.db.execute(
                "select coalesce(max(idx) + 1, 0) from items where suite_id = ?", [target["id"]]
            ).fetchone()[0]
            ws.db.execute(
                "update items set suite_id = ?, idx = idx + ? where suite_id = ?", [target["id"], offset, stage.id]
            )
            meta = dict(target_meta)
            meta["duplicates"] = int(meta.get("duplicates", 0)) + stats["duplicates"]
            meta["files"] = list(meta.get("files", [])) + [file_meta]
            ws.db.execute(
                "update suites set source = ?, meta = ? where id = ?",
                [", ".join(f["name"] for f in meta["files"]), dumps(meta), target["id"]],
            )
            ws.db.execute("delete from suites where id = ?", [stage.id])


def _drop_published_duplicates(ws, stage_id: int, target_id: int, stats: dict, file_meta: dict) -> None:
    """Drop staged items the target suite gained while this import ran (another import of the
    same items published first), index entries first: the parent is still 'importing', so the
    FTS delete trigger stays quiet."""
    where = "suite_id = ? and content_hash in (select content_hash from items where suite_id = ?)"
    ws.db.execute(
        f"insert into items_fts(items_fts, rowid, prompt) select 'delete', id, prompt from items where {where}",
        [stage_id, target_id],
    )
    n = ws.db.execute(f"delete from items where {where}", [stage_id, target_id]).rowcount
    stats["imported"] -= n
    stats["duplicates"] += n
    file_meta["imported"] -= n
