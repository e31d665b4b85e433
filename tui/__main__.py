"""`python -m tui [--workspace PATH] [--screen NAME]`: open the mirage app (what `textual serve` runs)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from tui.app import SCREENS, run

    parser = argparse.ArgumentParser(prog="python -m tui", description="Open the mirage TUI on a workspace.")
    parser.add_argument("--workspace", "-w", metavar="PATH", default=None,
                        help="workspace folder (default: $MIRAGE_WORKSPACE, else the current folder)")
    parser.add_argument("--screen", choices=sorted(SCREENS), default="data", help="screen to open first")
    args = parser.parse_args(argv)
    return run(args.workspace, start=args.screen)


if __name__ == "__main__":
    sys.exit(main())
