"""Windowed reads for browsing a dataset's examples or a suite's items page by page (the TUI's Data screen).

A browser pages a source's rows by position (`window`), or, for a full-text search, asks once for
the ordered ids of the matches (`search_ids`) and fetches summaries for the ids on screen
(`summaries`); one full record when the user opens a row (`record`). Summaries are never loaded
for rows not shown.
"""

from __future__ import annotations

import json

from core.data.datasets import get_dataset, get_suite
from core.store.workspace import Workspace

KINDS = ("dataset", "suite")
SNIPPET = 240  # characters of each text column a summary carries (a table cell shows fewer)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _summary_columns(kind: str, alias: str = "") -> str:
    a = f"{alias}." if alias else ""
    if kind == "suite":
        return (
            f"{a}id as id, {a}idx as idx, {a}task as task, substr({a}prompt, 1, {SNIPPET}) as prompt,"
            f" {a}gold as gold, {a}choices as choices"
        )
    return (
        f"{a}id as id, {a}idx as idx, {a}source as source, {a}n_tokens as n_tokens,"
        f" json_array_length({a}conversation) as turns, substr({a}user_text, 1, {SNIPPET}) as user,"
        f" substr({a}assistant_text, 1, {SNIPPET}) as assistant"
    )


def _decode_summary(kind: str, r: dict) -> dict:
    if kind == "suite":
        r["gold"] = json.loads(r["gold"] or "[]")
        r["choices"] = json.loads(r["choices"]) if r["choices"] else None
    return r


def count(ws: Workspace, kind: str, name: str) -> int:
    """Rows of a dataset (or subset) or suite."""
    _check_kind(kind)
    if kind == "suite":
        s = get_suite(ws, name)
        return ws.db.execute("select count(*) from items where suite_id = ?", [s["id"]]).fetchone()[0]
    from core.data.datasets import count_examples

    return count_examples(ws, name)[0]


def window(ws: Workspace, kind: str, name: str, start: int, stop: int) -> list[dict]:
    """Summaries of the rows at positions start..stop-1 of a source, in its stable order.

    Browsing pages by position (an index range scan), so opening a 100k dataset reads one page,
    not 100k ids.
    """
    _check_kind(kind)
    limit, offset = max(stop - start, 0), max(start, 0)
    if kind == "suite":
        s = get_suite(ws, name)
        sql = f"select {_summary_columns('suite')} from items where suite_id = ? order by idx limit ? offset ?"
        args = [s["id"], limit, offset]
    else:
        ds = get_dataset(ws, name)
        if ds["kind"] == "subset":
            sql = (
                f"select {_summary_columns('dataset', 'e')} from examples e join subset_members m"
                " on m.example_id = e.id where m.subset_id = ? order by e.dataset_id, e.idx limit ? offset ?"
            )
        else:
            sql = (
                f"select {_summary_columns('dataset')} from examples where dataset_id = ? order by idx limit ? offset ?"
            )
        args = [ds["id"], limit, offset]
    return [_decode_summary(kind, r) for r in ws.db.query(sql, args)]


def summaries(ws: Workspace, kind: str, ids: list[int], query: str = "") -> list[dict]:
    """Short rows for `ids`, in the order given (ids that no longer exist are skipped).

    With `query`, the text columns are FTS snippets around its matches (wrapped in [ ]) where the
    match is in that column, so a search result shows why it matched.
    """
    _check_kind(kind)
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    table = "items" if kind == "suite" else "examples"
    sql = f"select {_summary_columns(kind)} from {table} where id in ({marks})"
    by_id = {r["id"]: r for r in ws.db.query(sql, ids)}
    if query:
        for i, snip in _snippets(ws, kind, ids, query).items():
            if i in by_id:
                by_id[i].update({k: v for k, v in snip.items() if k != "id" and v and "[" in v})
    return [_decode_summary(kind, by_id[i]) for i in ids if i in by_id]


def record(ws: Workspace, kind: str, row_id: int) -> dict:
    """One example (conversation decoded) or item (gold, choices decoded) with its source's name."""
    _check_kind(kind)
    from core.data.datasets import decode_example, decode_item
    from core.errors import NotFound

    if kind == "suite":
        rows = list(
            ws.db.query(
                "select i.*, s.name as suite, s.kind as suite_kind from items i join suites s on s.id = i.suite_id"
                " where i.id = ?",
                [row_id],
            )
        )
    else:
        rows = list(
            ws.db.query(
                "select e.*, d.name as dataset from examples e join datasets d on d.id = e.dataset_id where e.id = ?",
                [row_id],
            )
        )
    if not rows:
        raise NotFound(f"no {'item' if kind == 'suite' else 'example'} with id {row_id} (deleted?)")
    return decode_item(rows[0]) if kind == "suite" else decode_example(rows[0])


def search_ids(ws: Workspace, kind: str, name: str, query: str) -> list[int]:
    """Ids of the rows matching `query` (FTS5, every word, last one as a prefix), best first.

    Only ids: a browser pages summaries for the window it shows (`summaries(..., query=)` adds the
    match snippets). core.data.search builds the query and owns the FTS tables (m010_ingest_fts).
    """
    _check_kind(kind)
    from core.data.search import ensure_indexed, fts_query

    q = fts_query(query)
    if q is None:
        return []
    if kind == "suite":
        s = get_suite(ws, name)
        sql = (
            "select i.id from items_fts join items i on i.id = items_fts.rowid"
            " where items_fts match ? and i.suite_id = ? order by rank"
        )
        return [r[0] for r in ws.db.execute(sql, [q, s["id"]])]
    ds = get_dataset(ws, name)
    ensure_indexed(ws)
    scope = (
        "e.id in (select example_id from subset_members where subset_id = ?)"
        if ds["kind"] == "subset"
        else "e.dataset_id = ?"
    )
    sql = (
        "select e.id from examples_fts join examples e on e.id = examples_fts.rowid"
        f" where examples_fts match ? and {scope} order by rank"
    )
    return [r[0] for r in ws.db.execute(sql, [q, ds["id"]])]


def _snippets(ws: Workspace, kind: str, ids: list[int], query: str) -> dict[int, dict]:
    """FTS5 snippets around the matches of `query` for these ids, matches wrapped in [ ]."""
    from core.data.search import SNIPPET_TOKENS, fts_query

    q = fts_query(query)
    if q is None or not ids:
        return {}
    marks = ",".join("?" * len(ids))
    if kind == "suite":
        cols = f"snippet(items_fts, 0, '[', ']', '…', {SNIPPET_TOKENS}) as prompt"
        table = "items_fts"
    else:
        cols = (
            f"snippet(examples_fts, 0, '[', ']', '…', {SNIPPET_TOKENS}) as user,"
            f" snippet(examples_fts, 1, '[', ']', '…', {SNIPPET_TOKENS}) as assistant"
        )
        table = "examples_fts"
    sql = f"select rowid as id, {cols} from {table} where {table} match ? and rowid in ({marks})"
    return {r["id"]: r for r in ws.db.query(sql, [q, *ids])}
