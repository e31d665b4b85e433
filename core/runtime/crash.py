"""Crash reports: an unexpected exception is written, redacted, to the user log folder."""

from __future__ import annotations

import datetime as _dt
import os
import re
import traceback
from pathlib import Path

_SECRETISH = re.compile(r"(key|token|secret|password|passwd|auth)", re.I)


def log_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mirage" / "log"


def redact(text: str, environ=None) -> str:
    """Remove the values of secret-looking environment variables and anything shaped like a key."""
    environ = os.environ if environ is None else environ
    for name, value in environ.items():
        if value and len(value) >= 6 and _SECRETISH.search(name):
            text = text.replace(value, f"<{name}>")
    text = re.sub(r"sk-[A-Za-z0-9_-]{8,}", "sk-<redacted>", text)
    text = re.sub(r"(?i)(bearer\s+)[A-Za-z0-9._-]{8,}", r"\1<redacted>", text)
    return text


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
