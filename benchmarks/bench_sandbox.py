"""Sandbox overhead: wall time of one trivial program (`pass`) through `run_program`, median of N.

Compares this tree's sandbox against another checkout's (--baseline DIR, e.g. a `git worktree`
of main; without it, this tree alone), interleaving the two so machine load hits both alike. One JSON line per figure.

    python benchmarks/bench_sandbox.py [--n 20] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--baseline", help="another checkout whose sandbox is the baseline")
    args = ap.parse_args()
    from core.scores import sandbox

    base_file = Path(args.baseline) / "core" / "scores" / "sandbox.py" if args.baseline else None
    base = load(base_file, "baseline_sandbox") if base_file and base_file.exists() else None
    runs = {"this": sandbox.run_program}
    if base is not None:
        runs["baseline"] = base.run_program
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        assert fn("pass\n").passed  # warm: the one-off probe and the page cache
    for _ in range(args.n):
        for name, fn in runs.items():
            t = time.perf_counter()
            r = fn("pass\n")
            times[name].append(time.perf_counter() - t)
            assert r.passed, r.stderr
    this = statistics.median(times["this"]) * 1000
    ref = statistics.median(times["baseline"]) * 1000 if base is not None else None
    print(
        json.dumps(
            {
                "name": "sandbox_trivial_program_ms",
                "value": round(this, 1),
                "unit": "ms (median)",
                "baseline": str(base_file) if base is not None else None,
                "baseline_value": None if ref is None else round(ref, 1),
                "ratio": None if ref is None else round(this / ref, 3),
                "isolation": sandbox.isolation(),
                "n": args.n,
            }
        )
    )


if __name__ == "__main__":
    main()
