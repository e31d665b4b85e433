"""Cached rescoring of real recorded outputs: `mirage score --json` against `mirage ls suites --json`.

Imports the AlpacaEval recorded outputs in ../shared/data (805 instructions, five real systems),
attaching them as 18 models (each file under several names, as a user comparing many runs would),
scores them once against gpt-3.5-turbo-0301, then times, in the same run and as fresh processes,
the median of a cached `score --json` (every score stored: only reading and aggregating) and of
`ls suites --json` (the cheapest command that opens the workspace). The ratio is the figure: the
issue's target is within 4x. `report --format json` and the Analysis screen's load
(`core.analysis.views.analysis`, in process; target: under a second) are timed too.

    python benchmarks/bench_score_cached.py [--models 18] [--items 805] [--repeat 5] [--quick]

`--quick` is 6 models x 200 items.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lines import emit  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "alpaca-eval-outputs"
FILES = ["gpt-3.5-turbo-0301", "vicuna-13b", "alpaca-7b", "text_davinci_003", "llama-2-7b-chat-hf"]
TEACHER = "gpt-3.5-turbo-0301"


def build(ws_dir: Path, n_models: int, n_items: int) -> None:
    from core.data.ingest import import_outputs, import_suite
    from core.runtime import progress
    from core.scores.scoring import score_suite
    from core.store.workspace import Workspace

    tmp = ws_dir.parent
    rows = {f: json.loads((DATA / f"{f}.json").read_text(encoding="utf-8"))[:n_items] for f in FILES}
    for f, r in rows.items():
        (tmp / f"{f}.json").write_text(json.dumps(r), encoding="utf-8")
    ws = Workspace.init(ws_dir)
    progress.run(import_suite(ws, tmp / f"{TEACHER}.json", "alpaca-eval", fmt="prompts"))
    progress.run(import_outputs(ws, tmp / f"{TEACHER}.json", "alpaca-eval", TEACHER))
    others = FILES[1:]
    for k in range(n_models - 1):
        f = others[k % len(others)]
        progress.run(import_outputs(ws, tmp / f"{f}.json", "alpaca-eval", f"{f}-{k // len(others)}"))
    t = time.perf_counter()
    progress.run(score_suite(ws, "alpaca-eval", teacher=TEACHER))
    emit(f"score_first_{n_models}x{n_items}_seconds", time.perf_counter() - t, "s", None, None)
    ws.close()


def timed(args: list[str], ws_dir: Path, repeat: int) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    out = ""
    for _ in range(repeat):
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "core", *args, "--workspace", str(ws_dir)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {r.stderr.strip()}")
        out = r.stdout
    return statistics.median(times), out


def analysis_view(ws_dir: Path, repeat: int) -> float:
    """What the Analysis screen's loading worker runs (core.analysis.views.analysis), in process."""
    from core.analysis import views
    from core.store.workspace import Workspace

    times = []
    for _ in range(repeat):
        ws = Workspace.open(ws_dir)
        t = time.perf_counter()
        views.analysis(ws, "alpaca-eval")
        times.append(time.perf_counter() - t)
        ws.close()
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=18)
    ap.add_argument("--items", type=int, default=805)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="6 models x 200 items")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.items = 6, 200
    if not (DATA / f"{TEACHER}.json").exists():
        print(f"AlpacaEval outputs not found at {DATA}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as d:
        ws_dir = Path(d) / "ws"
        build(ws_dir, args.models, args.items)
        # One untimed run of each: the aggregate cache is filled by the first `score` after scoring.
        timed(["score", "--suite", "alpaca-eval", "--json"], ws_dir, 1)
        t_ls, _ = timed(["ls", "suites", "--json"], ws_dir, args.repeat)
        t_score, out = timed(["score", "--suite", "alpaca-eval", "--json"], ws_dir, args.repeat)
        t_report, _ = timed(["report", "--suite", "alpaca-eval", "--format", "json"], ws_dir, args.repeat)
        assert json.loads(out), "score --json printed no records"
        t_view = analysis_view(ws_dir, args.repeat)
    size = f"{args.models}x{args.items}"
    emit(f"ls_suites_json_{size}_seconds", t_ls, "s", None, None)
    emit(f"score_json_cached_{size}_seconds", t_score, "s", "ls suites --json", t_ls)
    emit(f"report_json_cached_{size}_seconds", t_report, "s", "ls suites --json", t_ls)
    emit(f"analysis_view_cached_{size}_seconds", t_view, "s", "the issue's target: 1 s", 1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
