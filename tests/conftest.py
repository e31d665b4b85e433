"""Shared fixtures: every user folder points at a temp dir; the model cache is shared per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory) -> Path:
    """One model cache for the whole run (converting a packaged model takes ~30-60 s).

    MIRAGE_TEST_MODEL_CACHE reuses a cache across runs (CI on the same machine, or a developer).
    """
    env = os.environ.get("MIRAGE_TEST_MODEL_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return tmp_path_factory.mktemp("mirage-cache")


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path, monkeypatch, model_cache_dir):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("MIRAGE_CACHE", str(model_cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(model_cache_dir / "hf"))
    monkeypatch.delenv("MIRAGE_WORKSPACE", raising=False)
    for var in list(os.environ):
        if var.startswith("MIRAGE_") and var not in ("MIRAGE_CACHE", "MIRAGE_TEST_MODEL_CACHE"):
            monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def ws(tmp_path):
    from core.store.workspace import Workspace

    w = Workspace.init(tmp_path / "ws")
    yield w
    w.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
