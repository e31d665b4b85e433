"""Long work as generators: core functions yield `Progress(done, total, detail)` and return a result.

This is the one protocol for long work. The same generator is driven by a rich progress bar in the
CLI (`drive`), a Textual ProgressBar in the TUI and a job's event log (both through `run` with an
`on_progress` callback), and a plain `run(gen)` in a test. A generator that calls another uses
`offset` or `phase` to place the inner progress inside its own, never a hand-written `next()` loop.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None = None
    detail: str = ""
    # Numbers a step carries beside its count, e.g. the trainer's loss, lr, tokens_per_s, eta_s.
    metrics: Mapping[str, float | None] | None = None
    # What done/total count: "" for items; "bytes" (an import's position in its file) reads as a
    # percentage, since "36463/40208" next to "48 imported" reads as rows.
    unit: str = ""

    def count_text(self) -> str:
        """done/total as a line shows it: "27/171", "91%" for bytes, "27" with no total."""
        if not self.total:
            return "" if self.unit == "bytes" else str(self.done)
        if self.unit == "bytes":
            return f"{100 * self.done / self.total:.0f}%"
        return f"{self.done}/{self.total}"


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


def run(
    gen: Work[T],
    on_progress: Callable[[Progress], None] | None = None,
    *,
    cancel: threading.Event | None = None,
) -> T:
    """Run a progress generator to its end and return its result.

    `on_progress` sees every step; `cancel` is checked before each one, so a driver can stop work
    that does not take a cancel event of its own.
    """
    while True:
        check_cancel(cancel)
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


def offset(gen: Work[T], done: int = 0, total: int | None = None, *, prefix: str = "") -> Work[T]:
    """Re-yield an inner generator's progress shifted by `done` units, out of `total`.

    With `total=None` the outer total is the inner total plus `done` (work that is partly cached).
    """

    def outer(p: Progress) -> Progress:
        t = total if total is not None else (None if p.total is None else p.total + done)
        return Progress(done + p.done, t, prefix + p.detail, p.metrics)

    return (yield from mapped(gen, outer))


def phase(gen: Work[T], start: int, span: int, total: int, *, prefix: str = "") -> Work[T]:
    """Re-yield an inner generator's progress as the slice [start, start + span] of `total` units.

    For a pipeline whose stages report in different units (examples embedded, n-grams indexed): each
    stage gets a share of one bar. An inner step without a total stays at `start`.
    """

    def outer(p: Progress) -> Progress:
        frac = min(1.0, p.done / p.total) if p.total else 0.0
        return Progress(start + int(round(frac * span)), total, prefix + p.detail, p.metrics)

    return (yield from mapped(gen, outer))


def mapped(gen: Work[T], fn: Callable[[Progress], Progress]) -> Work[T]:
    """Re-yield an inner generator's progress through `fn`; returns its result."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield fn(p)


def in_thread(fn: Callable[[], T], detail: str, *, every_s: float = 0.5) -> Work[T]:
    """Run a blocking call that cannot report progress in a thread, yielding liveness meanwhile."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    t.start()
    while t.is_alive():
        t.join(every_s)
        yield Progress(0, None, f"{detail} ({time.monotonic() - start:.0f} s)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def throttled(on_progress: Callable[[Progress], None], every_s: float = 1.0) -> Callable[[Progress], None]:
    """A callback that passes a step on at most every `every_s` seconds, and always the last one."""
    last = [0.0]

    def cb(p: Progress) -> None:
        t = time.monotonic()
        if t - last[0] >= every_s or (p.total and p.done >= p.total):
            last[0] = t
            on_progress(p)

    return cb


def drive(gen: Work[T], description: str, *, show_after: float = 1.0, quiet: bool = False) -> T:
    """Run `gen` with a rich progress bar on stderr, shown only if the work takes over `show_after` s."""
    if quiet or not sys.stderr.isatty():
        if quiet:
            return run(gen)

        # Non-interactive: an occasional plain line so logs show liveness without flooding.
        def line(p: Progress) -> None:
            print(f"{description}: {p.count_text()} {p.detail}", file=sys.stderr, flush=True)

        return run(gen, _after(throttled(line, every_s=10), 10))
    return _drive_bar(gen, description, show_after)


def _after(cb: Callable[[Progress], None], seconds: float) -> Callable[[Progress], None]:
    start = time.monotonic()

    def later(p: Progress) -> None:
        if time.monotonic() - start > seconds:
            cb(p)

    return later


def _drive_bar(gen: Work[T], description: str, show_after: float) -> T:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    start = time.monotonic()
    state: dict[str, Any] = {}

    def show(p: Progress) -> None:
        if "bar" not in state and time.monotonic() - start >= show_after:
            bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                transient=True,
                console=Console(stderr=True),
            )
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(description, total=p.total, detail="")
        if "bar" in state:
            state["bar"].update(state["task"], completed=p.done, total=p.total, detail=p.detail[:40])

    try:
        return run(gen, show)
    finally:
        if "bar" in state:
            state["bar"].stop()
