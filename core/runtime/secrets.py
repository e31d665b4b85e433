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
_known_version = 0  # bumped when _known grows, so the cached replacements are rebuilt
_lock = threading.Lock()

# redact() runs for every event and message, and scanning the whole environment (decoding every
# value, a regex per name) was nearly all of its time. So: each name is tested once, only the
# values of secret-looking names are read, and the sorted replacements are rebuilt only when those
# values (or the remembered ones) change; a key set or changed later in the process is still seen.
_secretish_names: dict[str, bool] = {}
_cached: tuple[tuple, int, list[tuple[str, str]]] | None = None


def remember(value: str | None) -> None:
    """Redact `value` from every later message of this process."""
    global _known_version
    if value and len(value) >= MIN_SECRET_LEN:
        with _lock:
            if value not in _known:
                _known.add(value)
                _known_version += 1


def _secret_env(environ) -> tuple[tuple[str, str], ...]:
    """(name, value) of the secret-looking variables whose values are long enough to redact."""
    out = []
    for name in environ:
        secretish = _secretish_names.get(name)
        if secretish is None:
            secretish = _secretish_names[name] = bool(_SECRETISH.search(name))
        if secretish:
            value = environ.get(name) or ""
            if len(value) >= MIN_SECRET_LEN:
                out.append((name, value))
    return tuple(out)


def _replacements(environ) -> list[tuple[str, str]]:
    """(value, label) for every secret to take out, longest first, so a key that contains another
    secret is removed whole."""
    global _cached
    env = _secret_env(environ)
    with _lock:
        if _cached is not None and _cached[0] == env and _cached[1] == _known_version:
            return _cached[2]
        values = [(v, "<redacted>") for v in _known] + [(v, f"<{name}>") for name, v in env]
        pairs = sorted(values, key=lambda x: -len(x[0]))
        _cached = (env, _known_version, pairs)
        return pairs


def redact(text: str, environ=None) -> str:
    """`text` without known secrets, secret-looking environment values, sk- keys or bearer tokens."""
    if not text:
        return text
    for value, label in _replacements(os.environ if environ is None else environ):
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
