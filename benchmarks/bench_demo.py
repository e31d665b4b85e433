"""Times the offline demo: `mirage demo --headless --quick` on a fresh workspace, then the rerun.

    python benchmarks/bench_demo.py [--full] [--workspace DIR]

Prints one JSON line per measurement. The baselines are the demo's budgets on a 2-core machine
(README, "The demo"): --quick under 10 minutes, the full study under 15 minutes on a first run
and under 8 after (the rerun is compared with the first run's budget). A run uses the model cache
as it is: delete `~/.cache/mirage/models` first to include the one-time model conversion.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_demo(ws: Path, quick: bool) -> float:
    cmd = [sys.executable, "-m", "core", "demo", "--headless", "--workspace", str(ws)] + (["--quick"] if quick else [])
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"demo failed ({proc.returncode})")
    return time.monotonic() - t0


def emit(name: str, value: float, baseline: str, baseline_value: float) -> None:
    print(
        json.dumps(
            {
                "name": name,
                "value": round(value, 1),
                "unit": "s",
                "baseline": baseline,
                "baseline_value": baseline_value,
                "ratio": round(value / baseline_value, 3),
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the full study instead of --quick")
    ap.add_argument("--workspace", help="workspace folder (default: a fresh temporary one)")
    args = ap.parse_args()
    ws = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="mirage-bench-demo-")) / "demo"
    kind = "full" if args.full else "quick"
    first_budget = 900.0 if args.full else 600.0
    again_budget = 480.0 if args.full else 600.0
    emit(f"demo_{kind}_first_run", run_demo(ws, not args.full), f"budget: {kind} study, first run", first_budget)
    emit(f"demo_{kind}_rerun", run_demo(ws, not args.full), f"budget: {kind} study, later run", again_budget)


if __name__ == "__main__":
    main()
