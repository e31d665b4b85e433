"""Full-text search (SQLite FTS5) over a dataset's examples and a suite's items.

The indexes are external-content FTS5 tables kept in step by triggers (migration
`m010_ingest_fts`). Rows written one by one (items, collected outputs) are indexed at once. An
import's rows are published with their ids in `fts_backlog` (m060_ingest_fts_backlog) and indexed
here afterwards: at once for a small import, by a background indexer for a large one. Every
search first finishes the backlog (waiting for a running indexer), so it never misses a row.

    python -m core.data.search index WORKSPACE     (what a large import starts in the background)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from core.data.datasets import get_dataset, get_suite
from core.store.workspace import Workspace

# What FTS5's unicode61 tokenizer calls a token: letters and digits (an underscore separates).
_WORD = re.compile(r"[^\W_]+")
SNIPPET_TOKENS = 12


def fts_query(text: str) -> str | None:
    """A user's free text as a safe FTS5 query: every word must occur, the last one as a prefix.

    Typed text is never passed through as FTS5 syntax: a stray quote, `-`, `:` or `AND` would be a
    syntax error or an operator. Each quoted word is one token, never a phrase: the examples
    index keeps no positions (m012_ingest_fts_detail_none). Returns None when there is no word.
    """
    words = _WORD.findall(text)
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    if text and not text[-1].isspace():
        quoted[-1] += "*"  # search-as-you-type: "photosyn" finds "photosynthesis"
    return " ".join(quoted)


INDEX_CHUNK = 2000  # rows per indexing transaction: short write-lock holds
BACKGROUND_MIN = 20_000  # a backlog this large is indexed by a background process


def index_pending(ws: Workspace) -> int:
    """Examples published but not yet in the full-text index."""
    return ws.db.execute("select count(*) from fts_backlog").fetchone()[0]


def _lock_path(ws: Workspace) -> Path:
    return ws.artifacts / "search-index.lock"


def index_backlog(ws: Workspace, *, wait: bool = True) -> int:
    """Index every example in the backlog; returns how many rows this call indexed.

    One indexer at a time (an flock on artifacts/search-index.lock, released by the kernel if
    the indexer dies): with `wait`, wait for a running one and then finish what is left;
    without, return 0 at once if one is running. Each chunk is indexed and taken off the backlog
    in one transaction, so a killed indexer loses nothing and the next one goes on.
    """
    import fcntl

    done = 0
    with open(_lock_path(ws), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return 0
        while True:
            with ws.transaction():
                row = ws.db.execute(
                    "select min(example_id), max(example_id) from"
                    " (select example_id from fts_backlog order by example_id limit ?)",
                    [INDEX_CHUNK],
                ).fetchone()
                if row[0] is None:
                    break
                lo, hi = row
                ws.db.execute(
                    "insert into examples_fts(rowid, user_text, assistant_text)"
                    " select id, user_text, assistant_text from examples where id between ? and ?"
                    " and id in (select example_id from fts_backlog where example_id between ? and ?)",
                    [lo, hi, lo, hi],
                )
                done += ws.db.execute("delete from fts_backlog where example_id between ? and ?", [lo, hi]).rowcount
    return done


def index_after_import(ws: Workspace) -> str:
    """After an import publishes: index a small backlog now, start a background indexer for a
    large one. Returns "indexed", "background" or "none"."""
    pending = index_pending(ws)
    if not pending:
        return "none"
    if pending < BACKGROUND_MIN:
        index_backlog(ws)
        return "indexed"
    repo = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    with open(ws.artifact_dir("logs") / "search-index.log", "ab") as log:
        # its own session: it outlives the import command (and a Ctrl-C in its terminal)
        subprocess.Popen(
            [sys.executable, "-m", "core.data.search", "index", str(ws.root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": path},
        )
    return "background"


def ensure_indexed(ws: Workspace) -> None:
    """Before a search: finish the backlog (waiting for a background indexer if one runs)."""
    if index_pending(ws):
        index_backlog(ws)


def search_examples(
    ws: Workspace, dataset: str, query: str, limit: int | None = 200, *, order: str = "rank"
) -> list[dict]:
    """Examples of `dataset` (or a subset) matching `query`, best first (`order="idx"`: source order).

    Each record: id, idx, source, n_tokens, user (snippet), assistant (snippet), with matches
    wrapped in [ ]. `limit=None` returns every match.
    """
    q = fts_query(query)
    if q is None:
        return []
    ds = get_dataset(ws, dataset)
    ensure_indexed(ws)
    if ds["kind"] == "subset":
        scope = "e.id in (select example_id from subset_members where subset_id = ?)"
    else:
        scope = "e.dataset_id = ?"
    sql = (
        "select e.id, e.idx, e.source, e.n_tokens,"
        f" snippet(examples_fts, 0, '[', ']', '…', {SNIPPET_TOKENS}) as user,"
        f" snippet(examples_fts, 1, '[', ']', '…', {SNIPPET_TOKENS}) as assistant"
        " from examples_fts join examples e on e.id = examples_fts.rowid"
        f" where examples_fts match ? and {scope}"
        + (" order by rank" if order == "rank" else " order by e.dataset_id, e.idx")
        + (" limit ?" if limit is not None else "")
    )
    args: list = [q, ds["id"]] + ([int(limit)] if limit is not None else [])
    return [dict(r) for r in ws.db.query(sql, args)]


def search_items(ws: Workspace, suite: str, query: str, limit: int | None = 200, *, order: str = "rank") -> list[dict]:
    """Items of `suite` whose prompt matches `query`: id, idx, key, task, prompt (snippet)."""
    q = fts_query(query)
    if q is None:
        return []
    s = get_suite(ws, suite)
    sql = (
        "select i.id, i.idx, i.key, i.task,"
        f" snippet(items_fts, 0, '[', ']', '…', {SNIPPET_TOKENS}) as prompt"
        " from items_fts join items i on i.id = items_fts.rowid"
        " where items_fts match ? and i.suite_id = ?"
        + (" order by rank" if order == "rank" else " order by i.idx")
        + (" limit ?" if limit is not None else "")
    )
    args: list = [q, s["id"]] + ([int(limit)] if limit is not None else [])
    return [dict(r) for r in ws.db.query(sql, args)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "index":
        print("usage: python -m core.data.search index WORKSPACE", file=sys.stderr)
        return 2
    ws = Workspace.open(args[1])
    try:
        n = index_backlog(ws)
    finally:
        ws.close()
    print(f"indexed {n:,} examples", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
