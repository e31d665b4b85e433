"""Helpers for Pilot tests: wait on real conditions, never on sleeps."""

from __future__ import annotations

import time

from textual.worker import WorkerCancelled


async def wait_for(pilot, condition, *, timeout: float = 30.0):
    """Poll a real condition: drain workers and the message queue, then yield briefly (timers).

    The timeout only bounds a failure; a passing test waits just as long as the app needs.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        try:
            await pilot.app.workers.wait_for_complete()
        except WorkerCancelled:  # superseded by a newer call in its group: expected
            pass
        await pilot.pause()
        if not condition():
            await pilot.pause(0.01)  # lets timers (debounces, the detail delay) fire
