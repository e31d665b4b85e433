"""Where mirage keeps things outside a workspace: the model cache and the user log folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MIRAGE_CACHE, else $XDG_CACHE_HOME/mirage, else ~/.cache/mirage."""
    env = os.environ.get("MIRAGE_CACHE")
    if env:
        p = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        p = Path(base) / "mirage"
    p.mkdir(parents=True, exist_ok=True)
    return p


def model_cache() -> Path:
    p = cache_dir() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p
