"""Long work as generators: core functions yield `Progress(done, total, detail)` and return a result.

The same generator is driven by a rich progress bar in the CLI (`drive`), a Textual ProgressBar in
the TUI, a job's event log, and a plain loop in a test (`exhaust`).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Generator, Iterator, TypeVar

from core.errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None = None
    detail: str = ""


Work = Generator[Progress, None, T]


def format_duration(seconds: float | None, unknown: str = "?") -> str:
    """Seconds as a short human duration ("45s", "3m07s", "1h02m"); `unknown` for None."""
    if seconds is None:
        return unknown
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def check_cancel(cancel: threading.Event | None) -> None:
    """Call between units of work; raises Cancelled once the event is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


def exhaust(gen: Work[T]) -> T:
    """Run a progress generator to the end and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iterate(gen: Work[T], results: list) -> Iterator[Progress]:
    """Yield the generator's progress and append its return value to `results`."""
    results.append((yield from gen))


def drive(gen: Work[T], description: str, *, show_after: float = 1.0, quiet: bool = False) -> T:
    """Run `gen` with a rich progress bar on stderr, shown only if the work takes over `show_after` s."""
    if quiet or not sys.stderr.isatty():
        start = time.monotonic()
        last_print = start
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            now = time.monotonic()
            # Non-interactive: an occasional plain line so logs show liveness without flooding.
            if not quiet and now - last_print > 10:
                total = f"/{p.total}" if p.total else ""
                print(f"{description}: {p.done}{total} {p.detail}", file=sys.stderr, flush=True)
                last_print = now
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress as RichProgress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    start = time.monotonic()
    bar = None
    task = None
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            if bar is None and time.monotonic() - start >= show_after:
                bar = RichProgress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    TextColumn("{task.fields[detail]}"),
                    transient=True,
                    console=_stderr_console(),
                )
                bar.start()
                task = bar.add_task(description, total=p.total, detail="")
            if bar is not None:
                bar.update(task, completed=p.done, total=p.total, detail=p.detail[:40])
    finally:
        if bar is not None:
            bar.stop()


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
