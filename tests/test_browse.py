"""core.data.browse: paging a source by position, search ids with snippets, one full record."""

from __future__ import annotations

import pytest
import tui_workspace

from core.data import browse
from core.errors import NotFound


@pytest.fixture
def data_ws(tmp_path):
    ws = tui_workspace.build(tmp_path / "ws", examples=50, items=12)
    yield ws
    ws.close()


def test_window_pages_in_source_order(data_ws):
    assert browse.count(data_ws, "dataset", "chat") == 50
    assert browse.count(data_ws, "suite", "nq") == 12
    page = browse.window(data_ws, "dataset", "chat", 10, 20)
    assert [r["idx"] for r in page] == list(range(10, 20))
    assert page[0]["turns"] == 3 and page[0]["user"] == "Question 10: tell me about topic10."
    assert [r["idx"] for r in browse.window(data_ws, "dataset", "chat", 45, 60)] == list(range(45, 50))
    items = browse.window(data_ws, "suite", "nq", 0, 3)
    assert items[1]["gold"] == ["author 1", "a1"] and items[1]["task"] == "literature"


def test_search_ids_and_snippets(data_ws):
    ids = browse.search_ids(data_ws, "dataset", "chat", "zephyr")
    rows = browse.summaries(data_ws, "dataset", ids, "zephyr")
    assert sorted(r["idx"] for r in rows) == list(tui_workspace.SEARCH_HITS[:2])  # 150 is beyond 50
    assert all("[zephyr]" in r["user"] and "[zephyr]" in r["assistant"] for r in rows)
    assert browse.search_ids(data_ws, "dataset", "chat", "zeph") == ids  # last word is a prefix
    assert browse.search_ids(data_ws, "dataset", "chat", '"(*') == []  # no words, no syntax error
    assert [
        r["idx"] for r in browse.summaries(data_ws, "suite", browse.search_ids(data_ws, "suite", "nq", "locomotive"))
    ] == [5]


def test_record_decodes_and_names_its_source(data_ws):
    first = browse.window(data_ws, "dataset", "chat", 3, 4)[0]
    rec = browse.record(data_ws, "dataset", first["id"])
    assert rec["dataset"] == "chat" and [t["role"] for t in rec["conversation"]] == ["system", "user", "assistant"]
    item = browse.record(data_ws, "suite", browse.window(data_ws, "suite", "nq", 5, 6)[0]["id"])
    assert item["suite"] == "nq" and item["gold"] == ["author 5", "a5"]
    with pytest.raises(NotFound):
        browse.record(data_ws, "dataset", 10_000)
    with pytest.raises(NotFound):
        browse.window(data_ws, "dataset", "nope", 0, 10)
