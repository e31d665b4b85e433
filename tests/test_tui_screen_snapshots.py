"""SVG snapshots of the Coverage, Jobs and Models screens at a fixed size.

Update with `pytest tests/test_tui_screen_snapshots.py --snapshot-update`, then look at the SVGs.
What a screen shows is built here with fixed values: job times, durations and ETAs are written
into the rows, the running job's pid is this test process (alive, never drawn), the workspace path
is replaced in the title, and the model cache is an empty folder so packaged models read the same
on every machine.
"""

from __future__ import annotations

import os

from compare_data import build_study
from pilot_helpers import wait_for
from test_coverage import study  # noqa: F401  (fixture)
from textual.widgets import DataTable, Input, RichLog, Static

from core.coverage import compute as cov
from core.models import registry as models
from core.runtime import progress
from core.runtime.processes import process_start
from core.store.workspace import dumps
from tui.app import MirageApp

SIZE = (120, 34)
DAY = "2026-01-05T"


async def settle(pilot, condition):
    """Wait for `condition`, with what differs per run (the temp path, a blinking cursor) fixed."""
    app = pilot.app
    app.sub_title = "workspace"
    for inp in app.screen.query(Input):
        inp.cursor_blink = False
    await wait_for(pilot, condition)
    await pilot.pause()


def add_job(ws, name, kind, status, *, step=0, total=None, loss=None, error=None, config=None, events=()) -> int:
    """A job row as core.runtime.jobs writes it; a running one is this (live) process.

    events: (seconds after 10:00:00, step, loss, eta_s, message).
    """
    pid = os.getpid() if status == "running" else None
    with ws.transaction():
        job_id = ws.db.execute(
            "insert into jobs (name, kind, status, pid, pid_started, step, total_steps, loss, config, error,"
            " created_at, started_at, finished_at, updated_at) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                name,
                kind,
                status,
                pid,
                process_start(pid) if pid else None,
                step,
                total,
                loss,
                dumps(config or {}),
                error,
                f"{DAY}09:59:00",
                f"{DAY}10:00:00",
                None if status in ("running", "queued") else f"{DAY}10:20:00",
                f"{DAY}10:20:00",
            ],
        ).lastrowid
        for at, ev_step, ev_loss, eta, message in events:
            ws.db.execute(
                "insert into job_events (job_id, time, step, total_steps, loss, eta_s, message) values (?,?,?,?,?,?,?)",
                [job_id, f"{DAY}10:{at // 60:02d}:{at % 60:02d}", ev_step, total, ev_loss, eta, message],
            )
    return job_id


def test_coverage_screen_tasks(snap_compare, study):  # noqa: F811
    progress.run(cov.compute(study, "imit", "qa", k=3))

    async def run_before(pilot):
        screen = pilot.app.screen
        await settle(
            pilot,
            lambda: screen.res is not None and screen.query_one("#cov-table", DataTable).row_count == 3,
        )

    app = MirageApp(study.root, start="coverage", start_args={"data": "imit", "suite": "qa"})
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_jobs_screen_running_finetune(snap_compare, ws):
    losses = [2.4, 1.9, 1.6, 1.45, 1.3, 1.22, 1.15, 1.1]
    running = add_job(
        ws,
        "finetune smollm2 on chat (all)",
        "finetune",
        "running",
        step=80,
        total=400,
        loss=losses[-1],
        events=[(0, 0, None, None, "started: 400 steps")]
        + [(30 * (i + 1), 10 * (i + 1), v, 1200.0 - 150 * i, None) for i, v in enumerate(losses)]
        + [(245, 80, None, 187.0, "checkpoint saved at step 80")],
    )
    add_job(ws, "finetune smollm2 on chat (300k)", "finetune", "done", step=40, total=40, loss=0.8125)
    add_job(ws, "generate teacher on nq", "generate", "failed", step=3, total=30, error="ModelError: endpoint refused")
    add_job(ws, "finetune smollm2 on chat (1.5M)", "finetune", "queued", total=200)

    async def run_before(pilot):
        screen = pilot.app.screen
        await settle(
            pilot,
            lambda: (
                screen.selected == running
                and len(screen.losses) == len(losses)
                and len(screen.query_one("#jobs-log", RichLog).lines) == 2
                and screen.query_one("#jobs-table", DataTable).row_count == 4
            ),
        )

    # Opened on the running job (`python -m tui --screen jobs --job N`).
    app = MirageApp(ws.root, start="jobs", start_args={"job": running})
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_models_screen_registry_and_jobs(snap_compare, ws, tmp_path, monkeypatch):
    monkeypatch.setenv("MIRAGE_CACHE", str(tmp_path / "empty-cache"))  # no packaged model converted yet
    build_study(ws, n_items=12)
    models.register(ws, "base", "hf", {"id": "HuggingFaceTB/SmolLM2-135M"})
    models.register(ws, "imitation", "recorded", {"source": "paper-outputs.jsonl"})
    models.register(ws, "teacher", "openai", {"base_url": "http://127.0.0.1:9/v1", "model": "teacher-model"})
    add_job(ws, "generate base on nq", "generate", "done", step=12, total=12)
    add_job(ws, "generate teacher on nq", "generate", "failed", step=3, total=12, error="ModelError: endpoint refused")
    add_job(ws, "collect teacher on prompts", "collect", "cancelled", step=40, total=100)
    add_job(ws, "finetune smollm2 on chat", "finetune", "done", step=4, total=4)  # not this screen's kind

    async def run_before(pilot):
        screen = pilot.app.screen
        await settle(
            pilot,
            lambda: (
                screen.query_one("#models-table", DataTable).row_count == 5
                and screen.query_one("#models-jobs", DataTable).row_count == 3
                and "fingerprint" in str(screen.query_one("#models-detail", Static).render())
            ),
        )

    assert snap_compare(MirageApp(ws.root, start="models"), terminal_size=SIZE, run_before=run_before)
