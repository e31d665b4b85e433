"""Run every benchmark (`benchmarks/bench_*.py`) and print their JSON lines.

    python benchmarks/run.py [NAME...] [-k SUBSTRING]      (NAME: `import` or `bench_import.py`)

Each script runs in its own process (so one's imports and caches never help another) and prints
one JSON line per measurement: {"name", "value", "unit", "baseline", "baseline_value", "ratio"}.
Lines that are not JSON (a script's own notes) go to stderr; a failing script is reported and the
run goes on; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these benchmarks (e.g. import tui_start)")
    parser.add_argument("-k", default="", help="only scripts whose name contains this")
    args = parser.parse_args(argv)
    wanted = {n.removesuffix(".py").removeprefix("bench_") for n in args.names}
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        if args.k not in script.stem or (wanted and script.stem.removeprefix("bench_") not in wanted):
            continue
        print(f"# {script.name}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        for line in proc.stdout.splitlines():
            try:
                json.loads(line)
            except ValueError:
                print(line, file=sys.stderr)
            else:
                print(line, flush=True)
        if proc.returncode != 0:
            failed.append(script.name)
            print(
                f"# {script.name} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}",
                file=sys.stderr,
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
