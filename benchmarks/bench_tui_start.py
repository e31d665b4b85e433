"""TUI cold start: process spawn to the Data screen's first rows on screen, on a 100k-conversation workspace.

Baseline: a bare Textual app (one Static) measured the same way (spawn to its first frame after
mount). Both run headless in a fresh interpreter; the figure is the median of several runs.
The 100k workspace (3 turns of ~300 words each, like the import benchmark's file) is generated
with direct SQL inserts and cached in the temp folder ($MIRAGE_BENCH_DIR to choose another).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N_EXAMPLES = int(os.environ.get("MIRAGE_BENCH_TUI_EXAMPLES", "100000"))
RUNS = int(os.environ.get("MIRAGE_BENCH_RUNS", "5"))

MIRAGE_CHILD = """
import sys
from tui.app import MirageApp, build_app, launch
from tui.widgets.data.row_table import RowTable


class Timed(MirageApp):
    framed = False

    def on_ready(self):
        super().on_ready()
        self.timer = self.set_interval(0.002, self.check)

    def check(self):
        tables = self.screen.query(RowTable)
        if tables and not self.framed:  # the Data screen is mounted: its first frame is next
            self.framed = True
            self.call_after_refresh(lambda: print("FRAME", flush=True))
        if tables and tables.first().row_at(0) is not None:
            self.timer.stop()
            self.call_after_refresh(self.done)

    def done(self):
        print("READY", flush=True)
        self.exit()


# the real start-up path: check the workspace, then run as `python -m tui` does
launch(build_app(sys.argv[1], app_class=Timed), headless=True, size=(120, 40))
"""

BARE_CHILD = """
from textual.app import App
from textual.widgets import Static

class Bare(App):
    def compose(self):
        yield Static("hello")

    def on_mount(self):
        self.call_after_refresh(self.done)

    def done(self):
        print("FRAME", flush=True)
        print("READY", flush=True)
        self.exit()

Bare().run(headless=True, size=(120, 40))
"""


def bench_dir() -> Path:
    return Path(os.environ.get("MIRAGE_BENCH_DIR") or Path(tempfile.gettempdir()) / "mirage-bench")


def build_workspace(n: int) -> Path:
    """A workspace with one n-conversation dataset, cached across runs (keyed by n)."""
    root = bench_dir() / f"tui-ws-{n}"
    if (root / "READY").exists():
        return root
    import hashlib
    import shutil

    from core.store.workspace import Workspace, now

    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace.init(root)
    rng = random.Random(0)
    vocab = [
        f"{a}{b}"
        for a in ("ka", "lo", "mi", "ne", "su", "ta", "vo", "re", "di", "po")
        for b in ("ran", "tel", "mos", "vik", "dun", "sal", "per", "gon", "lit", "baz")
    ]
    vocab += "the of and to in is was for on that with as by at from an were are which this be".split()

    def words(k: int) -> str:
        return " ".join(rng.choices(vocab, k=k))

    with ws.transaction():
        did = ws.db.execute(
            "insert into datasets (name, kind, format, source, created_at) values (?,?,?,?,?)",
            ["imitation-100k", "imitation", "sharegpt", "generated.jsonl", now()],
        ).lastrowid
        batch = []
        for i in range(n):
            conv = [
                {"role": "user", "content": words(300)},
                {"role": "assistant", "content": words(300)},
                {"role": "user", "content": words(300)},
            ]
            user = conv[0]["content"] + "\n" + conv[2]["content"]
            batch.append(
                (
                    did,
                    i,
                    "generated.jsonl",
                    json.dumps(conv),
                    user,
                    conv[1]["content"],
                    1200,
                    hashlib.sha1(f"{i}".encode()).hexdigest(),
                )
            )
            if len(batch) == 5000:
                ws.db.conn.executemany(
                    "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
                    " n_tokens, content_hash) values (?,?,?,?,?,?,?,?)",
                    batch,
                )
                batch = []
        if batch:
            ws.db.conn.executemany(
                "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
                " n_tokens, content_hash) values (?,?,?,?,?,?,?,?)",
                batch,
            )
    ws.close()
    (root / "READY").write_text(str(n))
    return root


def time_child(code: str, *args: str) -> dict[str, float]:
    """Seconds from spawn to each line the child prints (FRAME: first frame; READY: rows on screen)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    marks = {}
    for line in proc.stdout:
        marks[line.strip()] = time.perf_counter() - start
        if line.strip() == "READY":
            break
    proc.wait(timeout=60)
    if "READY" not in marks:
        raise RuntimeError(f"child did not get ready: {marks} {proc.stderr.read()[-2000:]}")
    return marks


def main() -> None:
    ws = build_workspace(N_EXAMPLES)
    time_child(BARE_CHILD)  # warm the OS file cache for both, so neither pays first-read costs
    time_child(MIRAGE_CHILD, str(ws))
    bare, mirage = [], []
    for _ in range(RUNS):  # interleaved so machine load affects both alike
        bare.append(time_child(BARE_CHILD))
        mirage.append(time_child(MIRAGE_CHILD, str(ws)))
    base = statistics.median(b["FRAME"] for b in bare)
    k = f"{N_EXAMPLES // 1000}k"
    for name, mark, what in (
        (f"tui_cold_start_{k}", "FRAME", "first frame of the Data screen"),
        (f"tui_cold_start_rows_{k}", "READY", f"first rows of the {k}-example table on screen"),
    ):
        value = statistics.median(m[mark] for m in mirage)
        print(
            json.dumps(
                {
                    "name": name,
                    "value": round(value, 3),
                    "unit": "s",
                    "baseline": "bare Textual app (one Static), spawn to first frame, same harness",
                    "baseline_value": round(base, 3),
                    "ratio": round(value / base, 3),
                    "what": what,
                }
            )
        )


if __name__ == "__main__":
    main()
