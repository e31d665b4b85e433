"""Compare screen speed: 5,000 items × 4 models, time from a key press to the repainted screen.

Measures `j` (next item) and `v` (switch the verdict-pattern filter) against a key bound to
nothing, in the same headless app at 200×50, one press every 0.3 s (a reader's pace; the screen
renders the neighbouring items in the pauses), plus `j` held down (back-to-back presses, nothing
rendered ahead); and the TUI process's peak memory. The workspace is
built with plain SQL in a child process, so its memory is not counted. One JSON line per figure.

    python benchmarks/bench_compare.py [--items 5000] [--presses 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from lines import emit  # noqa: E402

TARGET_P95_MS = 50.0
TARGET_RSS_MB = 400.0
READ_PAUSE_S = 0.3


def build(path: str, items: int) -> None:
    from compare_data import build_big

    from core.store.workspace import Workspace

    ws = Workspace.init(path)
    build_big(ws, n_items=items)
    ws.close()


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def measure(path: str, presses: int) -> dict:
    from tui.app import MirageApp

    app = MirageApp(path, start="compare", start_args={"suite": "big"})
    out: dict = {}
    async with app.run_test(size=(200, 50)) as pilot:
        screen = app.screen
        t0 = time.perf_counter()
        while screen.view is None or not screen.panes or screen.panes[0].pane is None:
            await app.workers.wait_for_complete()
            await pilot.pause(0.01)
        out["load_s"] = time.perf_counter() - t0
        assert len(screen.view.models) == 4 and screen.view.n >= presses

        from textual import events

        cpu_ms: dict[str, list[float]] = {"j": [], "f19": [], "v": []}
        out["cpu"] = cpu_ms

        async def settle() -> None:
            # A key hops app -> focused widget -> binding -> action -> widget updates: wait until
            # every queue on the way is empty, not just the messages queued when we started.
            while True:
                await pilot._wait_for_screen()
                nodes = [app, *app.screen.walk_children(with_self=True)]
                if all(node._message_queue.empty() for node in nodes):
                    return

        async def timed(key: str) -> float:
            # Pilot.press also waits for the CPU to go idle, which on a shared machine measures
            # the neighbours; here: deliver the key, let every widget handle what it queued,
            # repaint now (not on the next 60 Hz tick), then run what waited on that repaint.
            start, cpu = time.perf_counter(), time.process_time()
            event = events.Key(key, key if len(key) == 1 else None)
            event.set_sender(app)
            app._driver.send_message(event)
            await settle()
            app.screen._on_timer_update()
            await settle()
            cpu_ms[key].append((time.process_time() - cpu) * 1000)
            return (time.perf_counter() - start) * 1000

        for _ in range(5):  # warm caches (CSS, fonts of markdown styles)
            await timed("j")
            await timed("f19")
        out["j"], out["empty"], out["v"], out["held"] = [], [], [], []
        for n in range(presses):
            # A reader's pace: the screen renders the neighbouring items while they read.
            await asyncio.sleep(READ_PAUSE_S)
            before = screen.position
            out["j"].append(await timed("j"))
            assert screen.position == before + 1, "j did not move within the measured time"
            await asyncio.sleep(READ_PAUSE_S)
            out["empty"].append(await timed("f19"))  # bound to nothing anywhere in mirage
            if n % 4 == 0:
                await asyncio.sleep(READ_PAUSE_S)
                out["v"].append(await timed("v"))
        # A held key: presses back to back, so nothing is rendered ahead.
        for _ in range(min(presses, 60)):
            out["held"].append(await timed("j"))
        assert screen.row is not None
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--presses", type=int, default=200)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(args.build, args.items)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ws")
        subprocess.run([sys.executable, __file__, "--build", path, "--items", str(args.items)], check=True)
        r = asyncio.run(measure(path, args.presses))
    empty50, empty95 = statistics.median(r["empty"]), pct(r["empty"], 0.95)
    emit("compare_j_p50", statistics.median(r["j"]), "ms", "empty key press p50", empty50)
    emit("compare_j_p95", pct(r["j"], 0.95), "ms", "empty key press p95", empty95)
    emit("compare_j_p95_vs_target", pct(r["j"], 0.95), "ms", "target p95", TARGET_P95_MS)
    emit("compare_j_held_p95", pct(r["held"], 0.95), "ms", "empty key press p95", empty95)
    emit(
        "compare_j_cpu_p50",
        statistics.median(r["cpu"]["j"]),
        "ms",
        "empty key press cpu p50",
        statistics.median(r["cpu"]["f19"]),
    )
    emit("compare_j_cpu_p95", pct(r["cpu"]["j"], 0.95), "ms", "empty key press cpu p95", pct(r["cpu"]["f19"], 0.95))
    emit("compare_filter_switch_p95", pct(r["v"], 0.95), "ms", "empty key press p95", empty95)
    emit("compare_open_5000x4", r["load_s"], "s", None, None)
    emit("compare_tui_peak_rss", r["rss_mb"], "MB", "target", TARGET_RSS_MB)


if __name__ == "__main__":
    main()
