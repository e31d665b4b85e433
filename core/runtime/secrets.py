"""Secrets never leave the process in text: every message that may carry an endpoint's words is redacted.

An endpoint's error body can echo the API key back ("Incorrect API key provided: sk-…"). The key's
value is remembered the moment it is read, so it is redacted whatever its shape; values of
secret-looking environment variables, anything shaped like an OpenAI key and `Bearer` tokens are
redacted as well.
"""

from __future__ import annotations

import os
import re
import threading

_SECRETISH = re.compile(r"(key|token|secret|password|passwd|auth)", re.I)
# A key starts a word: without the look-behind "task-specific" was redacted to "task-<redacted>".
_KEYLIKE = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
MIN_SECRET_LEN = 6  # shorter values (EMPTY, 1234) would redact ordinary words

_known: set[str] = set()
_lock = threading.Lock()


def remember(value: str | None) -> None:
    """Redact `value` from every later message of this process."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _known.add(value)


def redact(text: str, environ=None) -> str:
    """`text` without known secrets, secret-looking environment values, sk- keys or bearer tokens."""
    if not text:
        return text
    environ = os.environ if environ is None else environ
    with _lock:
        values = [(v, "<redacted>") for v in _known]
    values += [
        (v, f"<{name}>") for name, v in environ.items() if len(v or "") >= MIN_SECRET_LEN and _SECRETISH.search(name)
    ]
    # Longest first, so a key that contains another secret is removed whole.
    for value, label in sorted(values, key=lambda x: -len(x[0])):
        text = text.replace(value, label)
    text = _KEYLIKE.sub("sk-<redacted>", text)
    return _BEARER.sub(r"\1<redacted>", text)


def redact_data(obj):
    """`obj` (a JSON-like value) with every string in it redacted; numbers and structure untouched."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_data(v) for v in obj]
    return obj
