"""The Models screen: lists models, adds one through the form, runs a generation job and cancels it (esc)."""

from __future__ import annotations

import pytest
from fake_openai import FakeOpenAI, Faults
from pilot_helpers import wait_for
from test_generation import make_suite
from textual.widgets import DataTable, Input, Select
from tiny_lm import build_tiny_llama

from core.models import registry as models
from core.runtime import jobs
from tui.app import MirageApp

pytestmark = pytest.mark.anyio
SIZE = (120, 36)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def table_names(app) -> list[str]:
    t = app.screen.query_one("#models-table", DataTable)
    return [t.get_row_at(i)[0] for i in range(t.row_count)]


async def test_models_screen_lists_adds_and_cancels(ws, tmp_path):
    folder = build_tiny_llama(tmp_path / "tiny")
    models.register(ws, "tiny", "hf", {"path": str(folder)})
    srv = FakeOpenAI(faults=Faults(delay_s=1.0)).start()
    # 40 items at 4 requests at a time and 1 s each: the cancel always lands with most not asked
    make_suite(ws, "qa", "qa", [{"prompt": f"Question {i}?", "gold": [str(i)]} for i in range(40)])
    try:
        app = MirageApp(ws.root, start="models")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "tiny" in table_names(app))
            assert table_names(app)[:2] == ["gemma3-270m", "smollm2-135m-instruct"]
            t = app.screen.query_one("#models-table", DataTable)
            assert t.get_row_at(table_names(app).index("tiny"))[3] == "yes"  # has a chat template

            # Add an endpoint through the form.
            await pilot.press("a")
            await wait_for(pilot, lambda: bool(app.screen.query("#f-name")))
            app.screen.query_one("#f-name", Input).value = "teacher"
            app.screen.query_one("#f-kind", Select).value = "openai"
            app.screen.query_one("#f-target", Input).value = srv.base_url
            app.screen.query_one("#f-extra", Input).value = "fake-model"
            await pilot.click("#f-add")
            await wait_for(pilot, lambda: "teacher" in table_names(app))
            assert models.get_model(ws, "teacher")["spec"]["base_url"] == srv.base_url

            # Generate with it as a background job, then cancel with esc.
            t = app.screen.query_one("#models-table", DataTable)
            t.move_cursor(row=table_names(app).index("teacher"))
            await pilot.press("g")
            await wait_for(pilot, lambda: bool(app.screen.query("#suite-name")))
            app.screen.query_one("#suite-name", Input).value = "qa"
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda: any(j["status"] == "running" and j["step"] >= 1 for j in jobs.list_jobs(ws, kind="generate")),
            )
            jt = app.screen.query_one("#models-jobs", DataTable)
            await wait_for(pilot, lambda: jt.row_count == 1 and jt.get_row_at(0)[2] == "running")
            await pilot.press("escape")
            await wait_for(pilot, lambda: jobs.list_jobs(ws, kind="generate")[0]["status"] == "cancelled")
            await wait_for(pilot, lambda: jt.row_count == 1 and jt.get_row_at(0)[2] == "cancelled")
            done = ws.db.execute("select count(*) from generations where model = 'teacher'").fetchone()[0]
            assert 1 <= done < 40  # what finished is kept; the rest was not asked
    finally:
        srv.stop()


async def test_server_column_in_view_at_120_columns(ws):
    """At 120 columns the server column was cut to "http://127.0.0."; it now comes before the
    location, as HOST:PORT, and the location's tail fills what is left."""
    import json
    import os

    from core.models import serving

    rec = serving.Server(
        model="gemma3-270m",
        port=8123,
        pid=os.getpid(),  # alive for the length of the test, so the record counts as running
        base_url="http://127.0.0.1:8123/v1",
        model_id="x",
        log="",
        started_at="",
    )
    (ws.artifact_dir("servers") / "8123.json").write_text(json.dumps(rec.__dict__))
    app = MirageApp(ws.root, start="models")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "gemma3-270m" in table_names(app))
        t = app.screen.query_one("#models-table", DataTable)
        row = t.get_row_at(table_names(app).index("gemma3-270m"))
        assert row[5] == "127.0.0.1:8123"
        assert sum(c.get_render_width(t) for c in t.ordered_columns) <= 120
