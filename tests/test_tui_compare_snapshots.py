"""SVG snapshots of Compare (80×24 and 200×50) and Analysis (200×50).

Update with `pytest tests/test_tui_compare_snapshots.py --snapshot-update`, then look at the SVGs.
"""

from __future__ import annotations

import pytest
from compare_data import build_study

from tui.app import MirageApp


@pytest.fixture
def study_ws(ws):
    build_study(ws, n_items=30)
    return ws


async def settle(pilot, condition, rounds: int = 300):
    app = pilot.app
    app.sub_title = "workspace"  # the temp path differs per run
    for _ in range(rounds):
        if condition():
            break
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not condition():
            await pilot.pause(0.01)
    else:
        raise AssertionError("the screen never settled")
    await pilot.pause()


def _compare_ready(app):
    s = app.screen
    return getattr(s, "view", None) is not None and s.panes and s.panes[0].pane is not None


def _compare(ws):
    return MirageApp(ws.root, start="compare", start_args={"suite": "nq"})


def test_compare_80x24(snap_compare, study_ws):
    async def run_before(pilot):
        await settle(pilot, lambda: _compare_ready(pilot.app))
        await pilot.press("j", "l")  # item 1, the imitation pane
        await settle(pilot, lambda: pilot.app.screen.active == 1)

    assert snap_compare(_compare(study_ws), terminal_size=(80, 24), run_before=run_before)


def test_compare_200x50_filtered_and_marked(snap_compare, study_ws):
    async def run_before(pilot):
        app = pilot.app
        await settle(pilot, lambda: _compare_ready(app))
        await pilot.press("v", "l", "x")  # teacher right, imitation wrong; mark the imitation ✗
        await settle(pilot, lambda: app.screen.panes[1].pane.mark == "incorrect")

    assert snap_compare(_compare(study_ws), terminal_size=(200, 50), run_before=run_before)


def test_analysis_200x50(snap_compare, study_ws):
    async def run_before(pilot):
        app = pilot.app
        await settle(pilot, lambda: getattr(app.screen, "report", None) is not None)

    app = MirageApp(study_ws.root, start="analysis", start_args={"suite": "nq"})
    assert snap_compare(app, terminal_size=(200, 50), run_before=run_before)
