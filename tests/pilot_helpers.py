"""Helpers for Pilot tests: wait on real conditions, never on sleeps."""

from __future__ import annotations

from textual.worker import WorkerCancelled


async def wait_for(pilot, condition, *, rounds: int = 600, step: float = 0.05):
    """Poll a real condition: drain workers and messages, then yield briefly (the poll timer)."""
    for _ in range(rounds):
        if condition():
            return
        try:
            await pilot.app.workers.wait_for_complete()
        except WorkerCancelled:
            pass
        await pilot.pause(step)
    raise AssertionError("condition never became true")
