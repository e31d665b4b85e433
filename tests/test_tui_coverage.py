"""The Coverage screen, driven by Pilot: compute with progress, drill down, clusters, subsets, cancel."""

from __future__ import annotations

import time

import pytest
from pilot_helpers import wait_for
from test_coverage import CODE, COOKING, PLANTED, add_dataset, add_suite, study  # noqa: F401  (fixture)
from textual.widgets import DataTable, ProgressBar, Static

from core.models import embeddings as emb
from tui.app import MirageApp

pytestmark = pytest.mark.anyio
SIZE = (120, 34)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def status(app) -> str:
    return str(app.screen.query_one("#cov-status", Static).render())


async def test_compute_drill_down_clusters_and_subset(study):  # noqa: F811
    app = MirageApp(study.root, start="coverage", start_args={"data": "imit", "suite": "qa"})
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: "no coverage computed" in status(app))
        await pilot.press("c")
        await wait_for(pilot, lambda: screen.res is not None)
        table = screen.query_one("#cov-table", DataTable)
        # tasks, most supported first
        assert [table.get_row_at(i)[0] for i in range(table.row_count)] == ["music", "sports", "science"]
        assert table.get_row_at(0)[3] == "100%" and table.get_row_at(2)[3] == "0%"
        await pilot.press("down", "enter")  # sports
        await wait_for(pilot, lambda: screen.level == "items")
        assert screen.sel_task == "sports" and table.row_count == 1
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.level == "item")
        right = str(screen.query_one("#cov-item-neighbors", Static).render())
        assert PLANTED in right and "nq-synth" in right
        left = str(screen.query_one("#cov-item-prompt", Static).render())
        assert "contaminated" in left
        await pilot.press("n")  # subset of the task's support, from the item view
        await wait_for(pilot, lambda: type(app.screen).__name__ == "SubsetName")
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: study.db.execute("select count(*) from datasets where name = 'imit-sports'").fetchone()[0] == 1,
        )
        assert (
            study.db.execute(
                "select count(*) from subset_members m join datasets d on d.id = m.subset_id"
                " where d.name = 'imit-sports'"
            ).fetchone()[0]
            == 1
        )
        await pilot.press("escape", "escape")
        await wait_for(pilot, lambda: screen.level == "tasks")
        await pilot.press("l")
        await wait_for(pilot, lambda: screen.level == "clusters")
        assert table.row_count == len(screen.res["clusters"]) and table.row_count >= 2
        await pilot.press("n")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "SubsetName")
        await pilot.press("escape")  # cancelled: nothing saved
        await wait_for(pilot, lambda: app.screen is screen)
        assert study.db.execute("select count(*) from datasets where kind = 'subset'").fetchone()[0] == 1


async def test_cancel_while_computing_then_continue(ws, monkeypatch):
    monkeypatch.setattr(emb, "SHARD_ROWS", 2)
    # Each shard takes at least 20 ms, so the Escape lands while shards are left: on a fast CPU
    # the 120 two-row shards of the real model could all finish before the key is handled.
    encode = emb._encode

    def paced(*a, **k):
        time.sleep(0.02)
        return encode(*a, **k)

    monkeypatch.setattr(emb, "_encode", paced)
    add_dataset(ws, "big", [(f"{q} (variant {i})", "ok", "chat") for i in range(20) for q in COOKING + CODE])
    add_suite(ws, "qa", [(q, ["x"], "t") for q in CODE])
    app = MirageApp(ws.root, start="coverage", start_args={"data": "big", "suite": "qa"})
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: "no coverage computed" in status(app))
        await pilot.press("c")
        bar = screen.query_one("#cov-progress", ProgressBar)
        for _ in range(2000):
            if bar.progress >= 2:
                break
            await pilot.pause(0.01)
        assert screen.query_one("#cov-busy").has_class("busy")
        await pilot.press("escape")
        assert "cancelled" in status(app)
        await wait_for(pilot, lambda: not any(w.group == "compute" and w.is_running for w in app.workers))
        assert screen.res is None
        assert ws.db.execute("select count(*) from coverage_runs").fetchone()[0] == 0
        done_before = len(emb.EmbeddingStore(ws, emb.resolve_model(""), "user").index())
        assert 0 < done_before < 240
        await pilot.press("c")
        await wait_for(pilot, lambda: screen.res is not None)
        assert ws.db.execute("select count(*) from coverage_runs").fetchone()[0] == 1
        assert len(emb.EmbeddingStore(ws, emb.resolve_model(""), "user").index()) == 240


async def test_opens_on_the_pair_whose_coverage_was_computed_last(study):  # noqa: F811
    """After `mirage demo` the screen opened on suite `code` (first by name) and said "no coverage
    computed" although the demo had computed imitation × qa: with no pair asked for, the latest
    computed one is shown."""
    from core.coverage import compute as cov
    from core.runtime import progress

    add_dataset(study, "another", [(q, "ok", "chat") for q in COOKING])  # sorts first among the data
    add_suite(study, "code", [(q, ["x"], "code") for q in CODE])  # sorts first among the suites
    progress.run(cov.compute(study, "imit", "qa", k=3))
    app = MirageApp(study.root, start="coverage")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.res is not None)
        assert (screen.data_name, screen.suite_name) == ("imit", "qa")
        assert screen.query_one("#cov-table", DataTable).row_count == 3  # its tasks
    # A pair asked for still wins, computed or not.
    app = MirageApp(study.root, start="coverage", start_args={"data": "another", "suite": "code"})
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "no coverage computed" in status(app))
        assert (app.screen.data_name, app.screen.suite_name) == ("another", "code")


async def test_clusters_serves_column_in_view_at_80_columns(study):  # noqa: F811
    """At 80×24 the clusters' "serves" column was cut ("geograp"): it comes before the terms."""
    from core.coverage import compute as cov
    from core.runtime import progress

    progress.run(cov.compute(study, "imit", "qa", k=3))
    app = MirageApp(study.root, start="coverage")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.res is not None)
        await pilot.press("l")
        await wait_for(pilot, lambda: screen.level == "clusters")
        table = screen.query_one("#cov-table", DataTable)
        serves = [str(c.label) for c in table.ordered_columns].index("serves")
        assert sum(c.get_render_width(table) for c in table.ordered_columns[: serves + 1]) <= 80
        assert any(str(table.get_row_at(i)[serves]) for i in range(table.row_count))
