"""Crash reports: an unexpected exception is written, redacted, to the user log folder."""

from __future__ import annotations

import datetime as _dt
import os
import traceback
from pathlib import Path

from core.runtime.secrets import redact


def log_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mirage" / "log"


def write_report(exc: BaseException, *, context: str = "") -> Path | None:
    try:
        folder = log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = folder / f"crash-{stamp}-{os.getpid()}.txt"
        body = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        path.write_text(redact(f"{context}\n{body}"), encoding="utf-8")
        return path
    except OSError:
        return None
