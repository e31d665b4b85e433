"""The cache key of a stored score: a hash of the metric, its registered version and its inputs.

A score row is recomputed exactly when its key changes: a new metric version, or a change in what
it was computed from (output, gold, the teacher's output, the judge model and prompt).
"""

from __future__ import annotations

import hashlib

from core.api.registry import VERSIONS
from core.store.workspace import dumps


def inputs_hash(metric: str, *parts) -> str:
    h = hashlib.sha256(dumps([metric, VERSIONS[metric], *parts]).encode())
    return h.hexdigest()[:32]
