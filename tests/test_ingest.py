"""Importers (core.ingest), full-text search (core.search) and the `mirage import` commands."""

from __future__ import annotations

import json

from core.search import fts_query, search_examples, search_items
from core.workspace import dumps, now


def _raw_example(ws, dataset_id, idx, user, assistant):
    conv = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    ws.db.execute(
        "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
        " n_tokens, content_hash) values (?, ?, 's', ?, ?, ?, 3, ?)",
        [dataset_id, idx, dumps(conv), user, assistant, f"h{idx}"])


def test_fts_tracks_inserts_updates_and_deletes(ws):
    ws.db.execute("insert into datasets (name, created_at) values ('d', ?)", [now()])
    ws.db.execute("insert into suites (name, kind, created_at) values ('s', 'qa', ?)", [now()])
    _raw_example(ws, 1, 0, "What is photosynthesis?", "Plants turn light into sugar.")
    _raw_example(ws, 1, 1, "Capital of France?", "Paris.")
    ws.db.execute("insert into items (suite_id, idx, prompt, content_hash) values (1, 0, 'who wrote hamlet', 'x')")

    assert [r["idx"] for r in search_examples(ws, "d", "photosyn")] == [0]  # prefix while typing
    assert [r["idx"] for r in search_examples(ws, "d", "paris")] == [1]    # assistant text too
    assert search_examples(ws, "d", "plants light")[0]["assistant"] == "[Plants] turn [light] into sugar."
    assert [r["idx"] for r in search_examples(ws, "d", '"paris: -')] == [1]                   # typed syntax is not FTS syntax
    assert search_examples(ws, "d", "  ") == []
    assert [r["key"] for r in search_items(ws, "s", "Hamlet ")] == [None]

    ws.db.execute("update examples set assistant_text = 'Lyon.' where idx = 1")
    assert search_examples(ws, "d", "paris") == []
    assert len(search_examples(ws, "d", "lyon")) == 1
    ws.db.execute("delete from datasets where id = 1")  # cascades to examples and their index rows
    assert ws.db.execute("select count(*) from examples_fts where examples_fts match 'lyon'").fetchone()[0] == 0
    assert fts_query('a "b') == '"a" "b"*'
