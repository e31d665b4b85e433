"""Full-text search (SQLite FTS5) over a dataset's examples and a suite's items.

The indexes are external-content FTS5 tables kept in step by triggers (migration
`m010_ingest_fts`), so anything written to `examples` / `items` is searchable at once.
"""

from __future__ import annotations

import re

from core.datasets import get_dataset, get_suite
from core.workspace import Workspace

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


def search_examples(ws: Workspace, dataset: str, query: str, limit: int | None = 200,
                    *, order: str = "rank") -> list[dict]:
    """Examples of `dataset` (or a subset) matching `query`, best first (`order="idx"`: source order).

    Each record: id, idx, source, n_tokens, user (snippet), assistant (snippet), with matches
    wrapped in [ ]. `limit=None` returns every match.
    """
    q = fts_query(query)
    if q is None:
        return []
    ds = get_dataset(ws, dataset)
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


def search_items(ws: Workspace, suite: str, query: str, limit: int | None = 200,
                 *, order: str = "rank") -> list[dict]:
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
