"""Messages the TUI posts between workers, screens and widgets: dataclasses, all in one module.

Worker threads never touch widgets: they post one of these to their screen, which handles it on
the UI thread. High-rate progress messages say `can_replace` so a slow UI drops stale ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class WorkDone(Message):
    """A core call made through `MirageScreen.run_core` returned `result`."""

    group: str
    result: Any
    callback: Callable[[Any], None] | None = None


@dataclass
class WorkProgress(Message):
    """A core generator yielded `core.runtime.progress.Progress` (done, total, detail)."""

    group: str
    done: int
    total: int | None = None
    detail: str = ""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, WorkProgress) and message.group == self.group


@dataclass
class WorkFailed(Message):
    """A core call failed; the app decides how to show it (modal or notification)."""

    group: str
    error: BaseException
    blocking: bool = True


@dataclass
class ExampleSelected(Message):
    """The Data screen's table moved to a row: `kind` is "dataset" or "suite", `row_id` the SQL id."""

    kind: str
    row_id: int
    open: bool = False  # Enter (open the detail) rather than a cursor move
    position: int = 0  # row position in the table
