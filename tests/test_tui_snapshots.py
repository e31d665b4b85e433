"""SVG snapshots of the TUI at a fixed size (update with `pytest tests/test_tui_snapshots.py --snapshot-update`)."""

from __future__ import annotations

import time

import pytest
import tui_workspace
from textual.widgets import Input
from textual.worker import WorkerCancelled

from tui.app import MirageApp
from tui.widgets.data.detail import Turn
from tui.widgets.data.row_table import RowTable

SIZE = (100, 30)


@pytest.fixture
def data_ws(tmp_path):
    ws = tui_workspace.build(tmp_path / "ws")
    yield ws
    ws.close()


async def settle(pilot, condition, timeout: float = 30.0):
    app = pilot.app
    app.sub_title = "workspace"  # the temp path differs per run
    for inp in app.screen.query(Input):
        inp.cursor_blink = False
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the screen never settled")
        try:
            await app.workers.wait_for_complete()
        except WorkerCancelled:
            pass
        await pilot.pause()
        if not condition():
            await pilot.pause(0.01)
    await pilot.pause()


def _ready(app, n_turns=3):
    return (
        bool(app.screen.query(RowTable))
        and app.screen.query_one(RowTable).row_at(0) is not None
        and len(app.screen.query(Turn)) == n_turns
        and all(t.children for t in app.screen.query(Turn))
    )


def test_data_screen_dataset(snap_compare, data_ws):
    async def run_before(pilot):
        await settle(pilot, lambda: _ready(pilot.app))

    assert snap_compare(MirageApp(data_ws.root), terminal_size=SIZE, run_before=run_before)


def test_data_screen_search_and_suite_item(snap_compare, data_ws):
    async def run_before(pilot):
        app = pilot.app
        await settle(pilot, lambda: _ready(app))
        sources = app.screen.query_one("#data-source-list")
        sources.highlighted = sources.get_option_index("suite:nq")
        await settle(
            pilot,
            lambda: (
                app.screen.query_one(RowTable).kind == "suite" and app.screen.query_one(RowTable).row_at(0) is not None
            ),
        )
        app.screen.query_one(RowTable).focus()
        await pilot.press("slash", *"zephyr", "enter")
        await settle(
            pilot,
            lambda: (
                app.screen.query_one(RowTable).total == 1
                and any(
                    t.role == "gold" and t.content == "author 5 | a5" and t.children for t in app.screen.query(Turn)
                )
            ),
        )

    assert snap_compare(MirageApp(data_ws.root), terminal_size=SIZE, run_before=run_before)
