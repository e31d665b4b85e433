"""`python -m tui [--workspace PATH] [--screen NAME]`: open the mirage app (what `textual serve` runs)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from tui.app import SCREENS, run

    parser = argparse.ArgumentParser(prog="python -m tui", description="Open the mirage TUI on a workspace.")
    parser.add_argument(
        "--workspace",
        "-w",
        metavar="PATH",
        default=None,
        help="workspace folder (default: $MIRAGE_WORKSPACE, else the current folder)",
    )
    parser.add_argument("--screen", choices=sorted(SCREENS), default="data", help="screen to open first")
    parser.add_argument("--suite", default=None, help="compare: the suite to open")
    parser.add_argument("--models", default=None, help="compare: models to show, comma-separated")
    parser.add_argument("--job", type=int, default=None, help="jobs: the job to select")
    args = parser.parse_args(argv)
    start_args: dict = {}
    if args.suite:
        start_args["suite"] = args.suite
    if args.models is not None:
        start_args["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.job is not None:
        start_args["job"] = args.job
    return run(args.workspace, start=args.screen, start_args=start_args or None)


if __name__ == "__main__":
    sys.exit(main())
