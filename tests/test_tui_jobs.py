"""The Jobs screen: live list with progress, loss curve and log; cancel, resume, re-attach; the launch form."""

from __future__ import annotations

import pytest
from pilot_helpers import wait_for
from textual.widgets import DataTable, Input, RichLog, Static

from core.runtime import jobs
from tui.app import MirageApp

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def table_status(app) -> dict[int, str]:
    t = app.screen.query_one("#jobs-table", DataTable)
    return {int(k.value): str(t.get_row(k)[3]) for k in t.rows}


def log_text(app) -> str:
    return "\n".join(str(line.text) for line in app.screen.query_one("#jobs-log", RichLog).lines)


async def test_selection_holds_still_between_polls(ws):
    """The newest job is selected by default; rebuilding the table each poll must not move it."""
    ids = [jobs.submit(ws, "selftest", f"j{i}", {"steps": 2, "sleep": 0.0}, detach=False) for i in range(4)]
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.selected == ids[-1] and len(screen.losses) == 2)
        picks: list[int | None] = []
        select = screen._select
        screen._select = lambda job_id: (picks.append(job_id), select(job_id))
        for _ in range(3):  # three polls, each writing the table again
            screen.poll()
            await app.workers.wait_for_complete()
            await pilot.pause()
        assert screen.selected == ids[-1]
        assert [p for p in picks if p != ids[-1]] == []


async def test_a_poll_leaves_the_table_where_the_reader_scrolled_it(ws):
    """Scrolled up to old jobs, the table jumped back to the cursor's row every second."""
    ids = [jobs.submit(ws, "selftest", f"j{i}", {"steps": 1, "sleep": 0.0}, detach=False) for i in range(40)]
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        table = screen.query_one("#jobs-table", DataTable)
        await wait_for(pilot, lambda: screen.selected == ids[-1] and table.row_count == 40)
        await wait_for(pilot, lambda: table.scroll_y > 0)  # the cursor, on the newest job, is in view
        table.scroll_to(y=0, animate=False)
        await pilot.pause()
        with ws.transaction():
            ws.db.execute("update jobs set loss = 9.5 where id = ?", [ids[0]])
        for _ in range(2):
            screen.poll()
            await app.workers.wait_for_complete()
            await pilot.pause()
        assert table.get_row(str(ids[0]))[5] == "9.5000"  # the change is shown, in place
        assert table.scroll_y == 0
        assert screen.selected == ids[-1] and table.cursor_row == 39


async def test_lists_jobs_with_progress_loss_curve_and_log_then_reattaches(ws):
    done = jobs.submit(ws, "selftest", "counts", {"steps": 4, "sleep": 0.0}, detach=False)
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: table_status(app).get(done) == "done")
        row = app.screen.query_one("#jobs-table", DataTable).get_row(str(done))
        assert "4/4" in str(row[4]) and row[5] == "0.2500"
        await wait_for(pilot, lambda: len(app.screen.losses) == 4)
        assert sorted(dict(app.screen.losses).items()) == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
        assert "done" in log_text(app)
    # Opened on a given job (`python -m tui --screen jobs --job N`), that job is selected.
    other = jobs.submit(ws, "selftest", "other", {"steps": 2, "sleep": 0.0}, detach=False)
    app = MirageApp(ws.root, start="jobs", start_args={"job": done})
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: table_status(app).get(other) == "done" and len(app.screen.losses) == 4)
        assert app.screen.selected == done
    # A job started while the app is closed shows up when it reopens: the screen only reads the DB.
    running = jobs.submit(ws, "selftest", "slow", {"steps": 400, "sleep": 0.05}, detach=True)
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: table_status(app).get(running) == "running")
        await wait_for(pilot, lambda: app.screen.selected == running and app.screen.losses)
        await pilot.press("c")
        await wait_for(pilot, lambda: table_status(app).get(running) == "cancelled")
        assert jobs.get_job(ws, running)["status"] == "cancelled"
        await pilot.press("r")
        await wait_for(pilot, lambda: table_status(app).get(running) in ("running", "done"))
        await pilot.press("c")
        await wait_for(pilot, lambda: table_status(app).get(running) == "cancelled")


async def test_launch_form_estimates_then_starts_a_finetune(ws, tmp_path):
    import test_finetune as tf

    base = tf.build_tiny_model(tmp_path / "tiny")
    tf.add_dataset(ws, "arith", [tf._conversation(i) for i in range(12)])
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        assert app.screen.query_one("#jobs-form").has_class("open")
        app.screen.query_one("#form-base", Input).value = str(base)
        app.screen.query_one("#form-data", Input).value = "arith"
        app.screen.query_one("#form-tokens", Input).value = "1M"
        app.screen.query_one("#form-batch_size", Input).value = "4"
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: app.screen.estimate_result is not None)
        shown = str(app.screen.query_one("#jobs-estimate", Static).render())
        assert "12 examples" in shown and "3 steps" in shown and "larger than the data" in shown
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any(s == "done" for s in table_status(app).values()), timeout=120)
        (job,) = jobs.list_jobs(ws)
        assert job["kind"] == "finetune" and job["config"]["batch_size"] == 4
        await wait_for(pilot, lambda: "adapter saved as model" in log_text(app))


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_log_lines_wrap_to_the_log_pane(ws, size):
    """A long log line wraps inside the log pane instead of running off its right edge.

    RichLog renders at its `min_width` (78 by default) when that is wider than the pane, so beside
    the loss plot every line past ~60 columns was clipped behind a horizontal scrollbar.
    """
    job = jobs.submit(ws, "selftest", "long", {"steps": 1, "sleep": 0.0}, detach=False)
    tail = "the end of a long line"
    jobs._event(ws, job, message="teacher 'teacher' ready at http://127.0.0.1:8601/v1 after 7 s; " + tail)
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: tail.split()[-1] in log_text(app))
        log = app.screen.query_one("#jobs-log", RichLog)
        assert log.virtual_size.width <= log.scrollable_content_region.width
        assert tail in " ".join(log_text(app).split())


async def test_status_line_counts_one_job_in_the_singular(ws):
    """The demo's first seconds read "1 jobs, 1 running"."""
    jobs.submit(ws, "selftest", "one", {"steps": 1, "sleep": 0.0}, detach=False)
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=SIZE) as pilot:
        status = app.screen.query_one("#jobs-status", Static)
        await wait_for(pilot, lambda: "running" in str(status.render()))
        assert str(status.render()).startswith("1 job, 0 running, 0 queued")
        jobs.submit(ws, "selftest", "two", {"steps": 1, "sleep": 0.0}, detach=False)
        app.screen.poll()
        await wait_for(pilot, lambda: str(status.render()).startswith("2 jobs, 0 running"))


@pytest.mark.parametrize("start, keys", [("jobs", []), ("data", ["3"])])
async def test_arrow_keys_move_through_jobs_at_once(ws, start, keys):
    """Up did nothing on the Jobs screen until tab: focus sat on the hidden launch form's scroller."""
    ids = [jobs.submit(ws, "selftest", f"j{i}", {"steps": 1, "sleep": 0.0}, detach=False) for i in range(3)]
    app = MirageApp(ws.root, start=start)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*keys)
        await wait_for(pilot, lambda: getattr(app.screen, "selected", None) == ids[-1] and len(table_status(app)) == 3)
        assert isinstance(app.focused, DataTable)
        await pilot.press("up")
        await wait_for(pilot, lambda: app.screen.selected == ids[-2])


async def test_error_column_in_view_at_80_columns(ws):
    """At 80×24 the error column was past the right edge; the bar gives way to the count."""
    ok = jobs.submit(ws, "selftest", "a long job name that goes on", {"steps": 2, "sleep": 0.0}, detach=False)
    bad = jobs.submit(ws, "selftest", "failing", {"steps": 2, "sleep": 0.0, "fail": True}, detach=False)
    app = MirageApp(ws.root, start="jobs")
    async with app.run_test(size=(80, 24)) as pilot:
        t = app.screen.query_one("#jobs-table", DataTable)
        await wait_for(pilot, lambda: t.row_count == 2)
        row = t.get_row(str(bad))
        assert str(row[-1]).startswith("asked to fail") and str(row[4]) == "2/2"
        assert str(t.get_row(str(ok))[1]).endswith("…")
        assert sum(c.get_render_width(t) for c in t.ordered_columns) <= 80
