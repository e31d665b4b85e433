"""The Data screen: sources with counts, the virtual table, the conversation view and full-text search."""

from __future__ import annotations

import pytest
import tui_workspace
from pilot_helpers import wait_for
from textual.widgets import Input, Markdown

from tui.app import MirageApp
from tui.widgets.data.detail import DetailPane, Turn
from tui.widgets.data.row_table import PAGE, RowTable
from tui.widgets.data.sources import SourceList

pytestmark = pytest.mark.anyio
SIZE = (100, 30)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def data_ws(tmp_path):
    ws = tui_workspace.build(tmp_path / "ws")
    yield ws
    ws.close()


def table(app) -> RowTable:
    return app.screen.query_one(RowTable)


def shown_turns(app) -> list[tuple[str, str]]:
    return [(turn.role, turn.content) for turn in app.screen.query(Turn)]


async def started(pilot):
    app = pilot.app
    await wait_for(
        pilot, lambda: app.screen.query(RowTable) and table(app).total > 0 and table(app).row_at(0) is not None
    )
    return app


async def test_sources_list_datasets_and_suites_with_counts(data_ws):
    app = MirageApp(data_ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        sources = app.screen.query_one(SourceList).sources
        assert set(sources) == {"dataset:chat", "suite:nq"}
        assert sources["dataset:chat"]["examples"] == 300
        assert sources["dataset:chat"]["tokens"] == sum(40 + i % 7 for i in range(300))
        assert sources["suite:nq"]["items"] == 40 and sources["suite:nq"]["tasks"] == 2
        assert app.focused is table(app)
        status = str(app.screen.query_one("#data-status").render())
        assert "row 1/300" in status and "dataset chat" in status


async def test_table_pages_rows_on_demand(data_ws):
    app = MirageApp(data_ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        t = table(app)
        assert t.total == 300
        assert len(t._cache) == PAGE  # only the first page was read, not all 300 rows
        assert t.row_at(PAGE + 10) is None
        await pilot.press("end")
        await wait_for(pilot, lambda: t.row_at(299) is not None)
        assert t.cursor == 299 and t.row_at(299)["idx"] == 299
        assert "user" in t.render_line(0).text and "Question 299" in "".join(
            t.render_line(y).text for y in range(1, t.size.height)
        )
        await pilot.press("home", "down", "down")
        assert t.cursor == 2


async def test_cursor_shows_the_conversation_as_chat_turns(data_ws):
    app = MirageApp(data_ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await wait_for(pilot, lambda: bool(app.screen.query(Turn)))
        assert [r for r, _ in shown_turns(app)] == ["system", "user", "assistant"]
        await pilot.press("down", "down")
        await wait_for(pilot, lambda: any("Question 2:" in text for _, text in shown_turns(app)))
        assistant = dict(shown_turns(app))["assistant"]
        assert "**what I know**" in assistant and "```python" in assistant
        turn = app.screen.query(Turn).last()
        await wait_for(pilot, lambda: bool(turn.query(Markdown)))  # rendered as markdown
        assert turn.query_one(Markdown).source.startswith("## About topic2")
        # Enter opens the example: the detail pane takes focus
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.focused, DetailPane))


async def test_full_text_search_and_clear(data_ws):
    app = MirageApp(data_ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*tui_workspace.SEARCH_WORD, "enter")
        t = table(app)
        await wait_for(pilot, lambda: t.total == 3 and t.row_at(0) is not None)
        assert sorted(t.row_at(p)["idx"] for p in range(3)) == list(tui_workspace.SEARCH_HITS)
        assert app.focused is t
        assert "3 matches for “zephyr”" in str(app.screen.query_one("#data-status").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: t.total == 300 and t.ids is None)  # browsing by position again
        assert app.screen.query_one("#data-search", Input).value == ""


async def test_suite_items_show_prompt_and_gold(data_ws):
    app = MirageApp(data_ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        sources = app.screen.query_one(SourceList)
        sources.highlighted = sources.get_option_index("suite:nq")
        t = table(app)
        await wait_for(pilot, lambda: t.kind == "suite" and t.total == 40 and t.row_at(5) is not None)
        assert [c.title for c in t.columns] == ["#", "task", "prompt", "gold"]
        t.focus()
        await pilot.press("down", "down", "down", "down", "down", "enter")
        await wait_for(pilot, lambda: any("zephyr locomotive" in text for _, text in shown_turns(app)))
        turns = dict(shown_turns(app))
        assert turns["gold"] == "author 5 | a5"
        # search within the suite
        await pilot.press("slash", *"zephyr", "enter")
        await wait_for(pilot, lambda: t.total == 1)


async def test_empty_workspace_explains_how_to_import(ws):
    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one("#data-empty").display)
        text = str(app.screen.query_one("#data-empty").render())
        assert "mirage import data FILE --name NAME" in text
        assert not app.screen.query_one("#data-layout").display


async def test_reload_picks_up_a_new_import(data_ws):
    app = MirageApp(data_ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        from core.store.workspace import now

        data_ws.db.execute(
            "insert into datasets (name, kind, format, source, created_at) values"
            " ('late', 'imitation', 'messages', 'x', ?)",
            [now()],
        )
        await pilot.press("r")
        await wait_for(pilot, lambda: "dataset:late" in app.screen.query_one(SourceList).sources)


def test_markdown_detection_keeps_raw_code_plain():
    from tui.widgets.data.detail import looks_like_markdown

    assert not looks_like_markdown("#include <iostream>\nint main() { return 0; }")
    assert not looks_like_markdown("#!/bin/sh\nfor f in *; do echo $f; done")
    assert looks_like_markdown("## About\n\ntext")
    assert looks_like_markdown("Steps:\n- one\n- two")
    assert looks_like_markdown("```python\nprint(1)\n```")
    assert looks_like_markdown("it is **bold**")


async def test_real_shared_data_imported_with_core_ingest(ws, shared_data):
    from core.data.ingest import import_data, import_suite
    from core.runtime import progress

    progress.run(import_suite(ws, shared_data / "nq-open" / "NQ-open.dev.jsonl", "nq-open"))
    progress.run(import_data(ws, [shared_data / "gpteacher" / "codegen-instruct.json"], "gpteacher"))
    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        t = table(app)
        assert t.kind == "dataset" and t.total == 4535
        # GPTeacher answers are bare code: shown as plain text, lines and <includes> intact
        await wait_for(pilot, lambda: any(turn.role == "assistant" for turn in app.screen.query(Turn)))
        answer = [turn for turn in app.screen.query(Turn) if turn.role == "assistant"][0]
        assert answer.content.startswith("#include <iostream>") and answer.markdown is False
        sources = app.screen.query_one(SourceList)
        sources.highlighted = sources.get_option_index("suite:nq-open")
        await wait_for(pilot, lambda: t.kind == "suite" and t.total == 3610 and t.row_at(0) is not None)
        t.focus()
        await pilot.press("slash", *"last time anyone was on the moon", "enter")
        await wait_for(pilot, lambda: t.total < 3610 and t.row_at(0) is not None)
        assert t.row_at(0)["idx"] == 0  # "when was the last time anyone was on the moon" ranks first
        assert "[moon]" in t.row_at(0)["prompt"]
        await pilot.press("enter")
        await wait_for(pilot, lambda: ("gold", "14 December 1972 UTC | December 1972") in shown_turns(app))


async def test_typing_q_in_search_does_not_quit(data_ws):
    app = MirageApp(data_ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("slash", *"question", "enter")
        t = table(app)
        await wait_for(
            pilot,
            lambda: app.screen.query_text == "question" and t.search_query == "question" and t.row_at(0) is not None,
        )
        assert app.is_running and t.total == 300
        assert "[Question]" in t.row_at(0)["user"]


@pytest.mark.parametrize(("size", "most"), [((80, 24), 24), ((120, 40), 34)])
async def test_sources_sidebar_narrows_on_small_terminals(data_ws, size, most):
    """At 80×24 the sources list took 33 of 80 columns; below 100 it takes 24."""
    app = MirageApp(data_ws.root)
    async with app.run_test(size=size) as pilot:
        await started(pilot)
        await pilot.pause()
        assert app.screen.query_one("#data-sources").size.width <= most
        assert app.screen.query_one("#data-sources").size.width >= most - 2
