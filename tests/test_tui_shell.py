"""The TUI frame: navigation, help, palette, key remaps, error display, start-up failures, no heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pilot_helpers import wait_for
from textual.command import CommandList

from tui import actions as actions_mod
from tui.app import SCREENS, MirageApp, build_app

pytestmark = pytest.mark.anyio
SIZE = (100, 30)
HEAVY = ("torch", "transformers", "datasets", "sentence_transformers", "peft")


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_navigation_reaches_every_screen(ws):
    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: type(app.screen).__name__ == "DataScreen")
        assert app.sub_title == str(ws.root)
        for name, _title, key in actions_mod.NAV:
            await pilot.press(key)
            await wait_for(pilot, lambda name=name: getattr(app.screen, "NAME", None) == name)
        assert set(app._screen_stacks) >= set(SCREENS)
        # back to data keeps the same screen instance (state survives navigation)
        first = app.screen_for("data")
        await pilot.press("1")
        await wait_for(pilot, lambda: app.screen is first)


async def test_nav_bar_click_switches_screen(ws):
    from tui.screens.base import NavBar

    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query(NavBar)))
        text = str(app.screen.query_one(NavBar).render())
        x = 1 + text.index(" 3 Jobs ") + 2  # 1: the bar's left padding
        await pilot.click("#nav", offset=(x, 0))
        await wait_for(pilot, lambda: getattr(app.screen, "NAME", None) == "jobs" and bool(app.screen.query(NavBar)))
        assert app.screen.query_one(NavBar).current == "jobs"


async def test_help_lists_every_registered_action(ws):
    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        table = app.screen.query_one("#help-table")
        ids = {str(k.value) for k in table.rows if not str(k.value).startswith("local:")}
        assert ids == set(actions_mod.REGISTRY)
        # the focused widget's own keys are listed too (the Data table's movement keys)
        local = {tuple(table.get_row(k)[1:3]) for k in table.rows if str(k.value).startswith("local:")}
        assert ("j", "Down") in local and ("pgdn", "Page down") in local
        assert {"app.goto.data", "app.help", "app.quit", "app.palette"} <= ids
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "DataScreen")


async def test_palette_runs_a_registry_action(ws):
    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CommandPalette")
        await pilot.press(*"analysis")
        await wait_for(
            pilot,
            lambda: (
                "Analysis" in str(app.screen.query_one(CommandList).get_option_at_index(0).prompt)
                if app.screen.query(CommandList) and app.screen.query_one(CommandList).option_count
                else False
            ),
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: getattr(app.screen, "NAME", None) == "analysis")


async def test_keys_remap_from_workspace_config(ws):
    ws.config_path.write_text(ws.config_path.read_text() + '"app.goto.jobs" = "f3"\n"app.help" = "f2"\n')
    app = build_app(ws.root)
    assert app.keymap == {"app.goto.jobs": "f3", "app.help": "f2"}
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("3")  # the old key no longer navigates
        await pilot.pause()
        assert app.screen.NAME == "data"
        await pilot.press("f3")
        await wait_for(pilot, lambda: getattr(app.screen, "NAME", None) == "jobs")
        assert " f3 Jobs " in str(app.screen.query_one("#nav").render())
        await pilot.press("f2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        row = app.screen.query_one("#help-table").get_row("app.goto.jobs")
        assert row[1] == "f3"


async def test_compare_receives_its_arguments(ws):
    app = MirageApp(ws.root, start="compare", start_args={"suite": "nq", "models": ["a", "b"]})
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "NAME", None) == "compare")
        assert app.screen.args == {"suite": "nq", "models": ["a", "b"]}
        app.goto("compare", suite="other")
        await pilot.pause()
        assert app.screen.args["suite"] == "other"


async def test_mirage_error_in_a_worker_is_a_modal_and_others_a_notification(ws):
    from core.data.datasets import get_dataset

    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        screen.run_core(get_dataset, "missing", group="t")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ErrorModal")
        assert app.screen.error_title == "Not found"
        assert "no dataset 'missing'" in app.screen.error_message
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)

        screen.run_core(get_dataset, "missing", group="t", blocking=False)
        await wait_for(pilot, lambda: any("no dataset" in n.message for n in app._notifications))

        def broken(ws):
            return {}["nope"]

        screen.run_core(broken, group="t")
        await wait_for(pilot, lambda: any("unexpected KeyError" in n.message for n in app._notifications))
        assert type(app.screen).__name__ != "ErrorModal"


async def test_run_core_gives_result_and_progress_back_on_the_ui_thread(ws):
    import threading

    from core.runtime.progress import Progress

    seen = {}

    def counting(ws, n):
        for i in range(n):
            yield Progress(i + 1, n, "step")
        return ws.db.execute("select count(*) from datasets").fetchone()[0], threading.get_ident()

    app = MirageApp(ws.root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        screen.run_core(counting, 5, on_result=lambda r: seen.update(result=r, thread=threading.get_ident()))
        await wait_for(pilot, lambda: "result" in seen)
        count, worker_thread = seen["result"]
        assert count == 0
        assert worker_thread != seen["thread"] == threading.get_ident()


async def test_a_crash_writes_a_redacted_report_and_one_line(ws, monkeypatch, tmp_path):
    monkeypatch.setenv("MY_API_KEY", "sk-supersecretvalue123")
    app = MirageApp(ws.root)

    def boom():
        raise RuntimeError("exploded with sk-supersecretvalue123")

    with pytest.raises(RuntimeError):
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            app.call_later(boom)
            await pilot.pause()
    assert app.crash_message.startswith("error: mirage crashed: RuntimeError")
    assert "\n" not in app.crash_message and "supersecret" not in app.crash_message
    from core.runtime.crash import log_dir

    reports = list(log_dir().glob("crash-*.txt"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "Traceback" in text and "supersecret" not in text


def _run_tui(*args: str, cwd=None):
    return subprocess.run([sys.executable, "-m", "tui", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_startup_failure_is_one_line_and_exit_2(tmp_path, ws):
    out = _run_tui("--workspace", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "not a mirage workspace" in out.stderr
    ws.config_path.write_text("[bogus]\nx = 1\n")
    out = _run_tui("--workspace", str(ws.root))
    assert out.returncode == 2
    assert "unknown key 'bogus'" in out.stderr and "Traceback" not in out.stderr
    ws.config_path.write_text("")
    ws.close()
    ws.db_path.write_bytes(b"this is not a database" * 100)
    for extra in ("-wal", "-shm"):
        (ws.root / f"mirage.db{extra}").unlink(missing_ok=True)
    out = _run_tui("--workspace", str(ws.root))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not a database" in out.stderr and "Traceback" not in out.stderr


def test_mirage_tui_command_reports_start_up_failure(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "core", "--workspace", str(tmp_path / "none"), "tui"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "not a mirage workspace" in out.stderr and "Traceback" not in out.stderr


async def test_no_heavy_imports_at_start_up(ws):
    # Run in a fresh interpreter: this test process may have imported torch for other tests.
    code = (
        "import asyncio, sys\n"
        "from tui.app import MirageApp\n"
        "async def main():\n"
        f"    app = MirageApp({str(ws.root)!r})\n"
        "    async with app.run_test(size=(100, 30)) as pilot:\n"
        "        await pilot.pause(); await app.workers.wait_for_complete(); await pilot.pause()\n"
        "        assert type(app.screen).__name__ == 'DataScreen'\n"
        f"    print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""


def test_lean_sqlite_utils_import_is_thread_safe_and_restored():
    # Fresh interpreter: sqlite-utils must not be imported yet for the lean path to run.
    code = (
        "import sys, threading\n"
        "from tui.app import import_sqlite_utils_lean, restore_sqlite_utils_types\n"
        "errors = []\n"
        "def worker():\n"
        "    try:\n"
        "        import_sqlite_utils_lean()\n"
        "        import numpy\n"
        "    except Exception as e:\n"
        "        errors.append(repr(e))\n"
        "assert 'sqlite_utils' not in sys.modules\n"
        "ts = [threading.Thread(target=worker) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "import sqlite_utils.db as sdb\n"
        "print('lean', sdb.np is None and sdb.pd is None)\n"
        "restore_sqlite_utils_types()\n"
        "import numpy as np\n"
        "print('restored', sdb.COLUMN_TYPE_MAPPING[np.int64], sdb.pd is not None, errors)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["lean True", "restored INTEGER True []"]
