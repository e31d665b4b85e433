"""Process and port helpers shared by jobs, servers and imports: is a pid ours and alive, which port is free."""

from __future__ import annotations

import os
import socket
import sys


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()
    if rest[0] in ("Z", "X"):  # zombie or dead: exited, its parent has not reaped it yet
        return None
    return rest[19]


def process_alive(pid: int | None, started: str | None = None) -> bool:
    """Is `pid` running (not a zombie)? With `started` (from `process_start`), is it still that process?

    The start time guards against pid reuse: a recorded pid may belong to another process by now.
    """
    if not pid:
        return False
    if sys.platform != "linux":  # no /proc: fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    current = _proc_start(pid)
    return current is not None and (started is None or current == started)


def process_start(pid: int) -> str | None:
    """The token `process_alive` compares against to recognise this very process later."""
    return _proc_start(pid) if sys.platform == "linux" else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS has just handed out on `host` (free now; a caller binds it soon after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True
