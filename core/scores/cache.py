"""Results computed from stored scores, cached in the workspace under a hash of their inputs.

An aggregate (bootstrap intervals over every model × task × metric) or a "this selection is
fully scored" mark is stored under `key(...)`: a sha256 of everything it was computed from, which
always includes `scores_version` (a counter that triggers on `scores` move on every insert,
delete and update, m070). So any change to any score gives new keys and the old entries are never
read again; `put` keeps the newest few per suite.
"""

from __future__ import annotations

import hashlib
import json

from core.store.workspace import Workspace, dumps, now

KEEP_PER_SUITE = 32


def scores_version(ws: Workspace) -> int:
    row = ws.db.execute("select version from score_state where id = 1").fetchone()
    return int(row[0]) if row else 0


def items_digest(ws: Workspace, suite_id: int) -> str:
    """A hash of every field of the suite's items a score or an aggregate reads."""
    h = hashlib.sha256()
    for row in ws.db.execute(
        "select id, prompt, task, gold, choices, tests, entry_point, meta from items where suite_id = ? order by id",
        [suite_id],
    ):
        h.update(dumps(list(row)).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def key(*parts) -> str:
    return hashlib.sha256(dumps(list(parts)).encode("utf-8", "surrogatepass")).hexdigest()


def get(ws: Workspace, k: str):
    row = ws.db.execute("select value from aggregate_cache where key = ?", [k]).fetchone()
    return None if row is None else json.loads(row[0])


def put(ws: Workspace, suite_id: int, k: str, value) -> None:
    with ws.transaction():
        ws.db.execute(
            "insert or replace into aggregate_cache (key, suite_id, value, created_at) values (?, ?, ?, ?)",
            [k, suite_id, json.dumps(value), now()],
        )
        ws.db.execute(
            "delete from aggregate_cache where suite_id = ? and key not in"
            " (select key from aggregate_cache where suite_id = ? order by created_at desc, rowid desc limit ?)",
            [suite_id, suite_id, KEEP_PER_SUITE],
        )
