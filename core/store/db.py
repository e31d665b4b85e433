"""The workspace database: SQLite through sqlite-utils, WAL, a busy timeout, migrations on open."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from core.store.lean import import_sqlite_utils

import_sqlite_utils()  # without pandas: see core.store.lean
import sqlite_utils  # noqa: E402

from core.store import migrations  # noqa: E402

BUSY_TIMEOUT_S = 60.0
PAGE_SIZE = 16384  # for new databases: see connect()


def connect(path: Path | str, *, migrate: bool = True) -> sqlite_utils.Database:
    """Open (creating if needed) the database at `path`, in WAL mode, migrated to the latest schema.

    The connection runs in autocommit mode (isolation_level=None): writes that must be atomic go
    through `transaction(db)`, which takes the write lock up front (BEGIN IMMEDIATE) so that
    concurrent writers wait on the busy timeout instead of failing with "database is locked".
    """
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        # A new database gets 16 KB pages (SQLite's default is 4 KB): an example row is ~5 KB of
        # text, which on 4 KB pages spills into overflow pages; on 16 KB pages ~3 fit in one
        # (benchmarks/bench_import.py --baseline DIR compares). Only settable before the first
        # table exists (and before WAL), so existing workspaces keep their page size.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    db = sqlite_utils.Database(conn)
    if db.journal_mode != "wal":
        db.enable_wal()
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    if migrate:
        migrations.migrate(db)
    return db


_local = threading.local()


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database):
    """All-or-nothing block of writes; nests with savepoints.

    Inside it, write with `db.execute` / `db.conn.executemany` or sqlite-utils table methods that
    do not commit on their own. On any exception everything written in the block is rolled back.
    """
    conn = db.conn
    depth = getattr(_local, "depth", {}).get(id(conn), 0)
    _local.depth = getattr(_local, "depth", {})
    if depth == 0:
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn.execute(f"SAVEPOINT sp{depth}")
    _local.depth[id(conn)] = depth + 1
    try:
        yield db
    except BaseException:
        if depth == 0:
            conn.execute("ROLLBACK")
        else:
            conn.execute(f"ROLLBACK TO sp{depth}")
            conn.execute(f"RELEASE sp{depth}")
        raise
    else:
        if depth == 0:
            conn.execute("COMMIT")
        else:
            conn.execute(f"RELEASE sp{depth}")
    finally:
        _local.depth[id(conn)] = depth


# SQLite's default limit on bound parameters in one statement is 999 (older builds); stay under it.
MAX_PARAMS = 900


def select_in(db: sqlite_utils.Database, sql: str, values: list, *, before: list | tuple = ()) -> list[tuple]:
    """Rows of `sql` for every value in `values`, whatever their number.

    `sql` holds one `{in}` where the placeholder list goes (`... where id in ({in})`); `before` are
    parameters that come ahead of it. The values are sent in chunks under SQLite's parameter limit.
    """
    rows: list[tuple] = []
    for i in range(0, len(values), MAX_PARAMS):
        chunk = list(values[i : i + MAX_PARAMS])
        rows.extend(db.execute(sql.format(**{"in": ",".join("?" * len(chunk))}), [*before, *chunk]).fetchall())
    return rows
