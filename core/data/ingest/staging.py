"""Staging: all-or-nothing imports without a long write lock, the bulk writer, bad-row reports.

Rows are written in short transactions under a private 'importing' parent row that readers
ignore; publishing makes them visible in one short transaction, and any failure drops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import BadInput, Cancelled
from core.runtime.processes import process_alive
from core.store.workspace import Workspace, dumps, now

BATCH = 1000  # rows per insert transaction: short write-lock holds, and a bounded chunk in memory

_CHILD = {  # staging parent table -> (child table, foreign key, indexed text columns)
    "datasets": ("examples", "dataset_id", ("user_text", "assistant_text")),
    "suites": ("items", "suite_id", ("prompt",)),
}


def _drop_staged(ws: Workspace, table: str, stage_id: int) -> None:
    # The parent still says 'importing', so the FTS delete trigger stays quiet: remove the rows'
    # index entries in bulk first, then the rows, then the parent.
    child, fk, cols = _CHILD[table]
    col_list = ", ".join(cols)
    with ws.transaction():
        if child == "examples":  # never indexed while staged; an older version's rows were queued by m060
            ws.db.execute(
                "delete from fts_backlog where example_id in (select id from examples where dataset_id = ?)", [stage_id]
            )
        else:
            ws.db.execute(
                f"insert into {child}_fts({child}_fts, rowid, {col_list}) select 'delete', id, {col_list}"
                f" from {child} where {fk} = ?",
                [stage_id],
            )
        ws.db.execute(f"delete from {child} where {fk} = ?", [stage_id])
        ws.db.execute(f"delete from {table} where id = ? and status = 'importing'", [stage_id])


def insert_indexed(ws: Workspace, table: str, stage_id: int, sql: str, rows: list[tuple]) -> int:
    """Insert a chunk of staged rows and (items) index them in bulk, in one transaction; returns rows added.

    Examples are indexed after publishing (core.data.search.index_backlog)."""
    child, fk, cols = _CHILD[table]
    col_list = ", ".join(cols)
    with ws.transaction():
        (last,) = ws.db.execute(f"select coalesce(max(id), 0) from {child}").fetchone()
        inserted = insert_rows(ws.db.conn, sql, rows)
        if inserted and child != "examples":
            ws.db.execute(
                f"insert into {child}_fts(rowid, {col_list}) select id, {col_list} from {child}"
                f" where {fk} = ? and id > ?",
                [stage_id, last],
            )
    return inserted


def insert_rows(conn, sql: str, rows: list[tuple]) -> int:
    """Run `insert ... values (?, ...)` for `rows` as few multi-row statements; returns rows added.

    Not executemany: that steps once per row, and each step gives up the GIL and must win it back
    from the parsing thread (up to the 5 ms switch interval each time). One statement per chunk
    gives it up once (`benchmarks/bench_import.py --ablations executemany` times the other way).
    """
    if not rows:
        return 0
    head, one = sql.rsplit(" values ", 1)
    width = len(rows[0])
    per = max(1, min(len(rows), conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    added = 0
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        params = [v for row in part for v in row]
        added += conn.execute(f"{head} values {','.join([one] * len(part))}", params).rowcount
    return added


@contextlib.contextmanager
def bulk_writes(ws: Workspace):
    """Settings for a large import, restored after it (`benchmarks/bench_import.py --ablations
    no_bulk_settings` times the import without them).

    - a 64 MB page cache: each chunk's rows land at random places in the content-hash index, and
      with the default 2 MB cache those index pages are evicted and read back, chunk after chunk;
    - a WAL checkpoint every ~160 MB instead of every ~16 MB;
    - temporary tables in memory: a multi-row insert into a table with row triggers (the FTS ones)
      goes through a temporary table, otherwise a temp file written to disk;
    - a 1 ms GIL switch interval instead of 5: the counter and the writer give the GIL up around
      every numpy call and SQLite statement and then wait for the parsing thread to hand it back.
    """
    conn = ws.db.conn
    (cache,) = conn.execute("pragma cache_size").fetchone()
    (checkpoint,) = conn.execute("pragma wal_autocheckpoint").fetchone()
    (temp_store,) = conn.execute("pragma temp_store").fetchone()
    switch = sys.getswitchinterval()
    conn.execute("pragma cache_size = -65536")
    conn.execute("pragma wal_autocheckpoint = 10000")
    conn.execute("pragma temp_store = memory")
    sys.setswitchinterval(min(switch, 0.001))
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        conn.execute(f"pragma temp_store = {int(temp_store)}")
        conn.execute(f"pragma wal_autocheckpoint = {int(checkpoint)}")
        conn.execute(f"pragma cache_size = {int(cache)}")


class Writer(threading.Thread):
    """Runs `flush(chunk)` for each submitted chunk on its own thread; the first error stops it
    and is re-raised on the next submit() or finish()."""

    def __init__(self, flush: Callable[[Any], None], name: str = "mirage-import-writer", depth: int = 2):
        super().__init__(daemon=True, name=name)
        import queue

        self.flush = flush
        self.queue: Any = queue.Queue(maxsize=depth)  # bounded: the reader never runs far ahead
        self.error: BaseException | None = None
        self.start()

    def run(self):
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is None:
                try:
                    self.flush(chunk)
                except BaseException as e:  # noqa: BLE001 - handed to the importing thread
                    self.error = e

    def submit(self, chunk) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(chunk)

    def finish(self) -> None:
        """Wait for every submitted chunk; raise the writer's error if it had one."""
        if self.is_alive():
            self.queue.put(None)
            self.join()
        if self.error is not None:
            raise self.error

    def finish_quietly(self) -> None:
        """On the importer's own failure: stop after the chunk in hand, dropping the rest."""
        if self.error is None:
            self.error = Cancelled("import stopped")
        if self.is_alive():
            self.queue.put(None)
            self.join()


def cleanup_stale(ws: Workspace) -> int:
    """Delete staging rows left by imports whose process is gone (killed, crashed). Returns how many."""
    removed = 0
    for table in _CHILD:
        for row in list(ws.db.query(f"select id, meta from {table} where status = 'importing'")):
            info = parse_meta(row["meta"]).get("import") or {}
            pid = info.get("pid")
            if pid == os.getpid() and info.get("token") in _live_imports:
                continue
            if pid and pid != os.getpid() and process_alive(int(pid)):
                continue
            _drop_staged(ws, table, row["id"])
            removed += 1
    return removed


_live_imports: set[str] = set()  # staging tokens of imports running in this process


class Staging:
    """A private 'importing' row in `datasets` or `suites` that collects an import's rows."""

    def __init__(self, ws: Workspace, table: str, name: str, kind: str | None = None):
        self.ws, self.table, self.name = ws, table, name
        self.token = f"{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"
        cleanup_stale(ws)
        target = list(ws.db.query(f"select * from {table} where name = ? and status = 'ready'", [name]))
        self.target = dict(target[0]) if target else None
        meta = {"import": {"pid": os.getpid(), "token": self.token, "target": name, "started": now()}}
        _live_imports.add(self.token)
        with ws.transaction():
            cols = "name, status, meta, created_at" + (", kind" if table == "suites" else "")
            vals = [f"~importing~{name}~{self.token}", "importing", dumps(meta), now()]
            if table == "suites":
                vals.append(kind or "prompts")
            cur = ws.db.execute(f"insert into {table} ({cols}) values ({', '.join('?' * len(vals))})", vals)
            self.id = cur.lastrowid

    def discard(self) -> None:
        try:
            _drop_staged(self.ws, self.table, self.id)
        finally:
            _live_imports.discard(self.token)

    def done(self) -> None:
        _live_imports.discard(self.token)


def _report_path(ws: Workspace, what: str, name: str) -> Path:
    stamp = now().replace(":", "").replace("+0000", "Z")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return ws.artifact_dir("import-reports") / f"{what}-{safe}-{stamp}.jsonl"


class BadRows:
    """Bad records: raised at once (all-or-nothing), or with --skip-bad written to a JSONL report."""

    def __init__(self, ws: Workspace, skip: bool, what: str, name: str):
        self.skip, self.n, self.path, self._f = skip, 0, None, None
        self._where = (ws, what, name)

    def __call__(self, e: BadInput, record: Any = None) -> None:
        if not self.skip:
            raise e
        self.n += 1
        if self._f is None:
            self.path = _report_path(*self._where)
            self._f = open(self.path, "w", encoding="utf-8")
        row = {"file": e.path, "line": e.line, "field": e.field, "reason": e.reason, "error": e.message}
        if record is not None:
            text = dumps(record) if not isinstance(record, BadInput) else None
            if text is not None and len(text) <= 10_000:
                row["record"] = record
        self._f.write(dumps(row) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def parse_meta(text: str | None) -> dict:
    """A row's `meta` JSON column as a dict ({} when empty)."""
    return json.loads(text or "{}")
