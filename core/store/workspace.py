"""A workspace: a folder holding `mirage.toml`, `mirage.db` and `artifacts/`."""

from __future__ import annotations

import datetime as _dt
import json
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import WorkspaceError
from core.store import config as config_mod

if TYPE_CHECKING:  # sqlite-utils (and core.store.db) load on first use of `.db`: ~60 ms off every start-up
    import sqlite_utils

CONFIG_NAME = "mirage.toml"
DB_NAME = "mirage.db"
ARTIFACTS = "artifacts"


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def dumps(obj) -> str:
    """JSON for storage: compact, key-sorted so equal values hash equally."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def resolve_path(path: str | os.PathLike | None) -> Path:
    """The workspace folder: explicit path, else $MIRAGE_WORKSPACE, else the current folder."""
    if path:
        return Path(path).expanduser().resolve()
    env = os.environ.get("MIRAGE_WORKSPACE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.cwd().resolve()


class Workspace:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike | None = None) -> Workspace:
        """Create a workspace (idempotent: an existing one is opened and migrated, never reset)."""
        root = resolve_path(path)
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root}: exists and is not a folder")
        root.mkdir(parents=True, exist_ok=True)
        (root / ARTIFACTS).mkdir(exist_ok=True)
        toml = root / CONFIG_NAME
        if not toml.exists():
            toml.write_text(config_mod.DEFAULT_TOML, encoding="utf-8")
        ws = cls(root)
        _ = ws.db  # create + migrate
        return ws

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> Workspace:
        root = resolve_path(path)
        if not (root / DB_NAME).exists():
            raise WorkspaceError(f"{root}: not a mirage workspace (no {DB_NAME}); create one with `mirage init {root}`")
        ws = cls(root)
        _ = ws.config  # validate early so a bad config fails at start-up, not halfway through
        return ws

    # -- parts -----------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def artifacts(self) -> Path:
        p = self.root / ARTIFACTS
        p.mkdir(exist_ok=True)
        return p

    def artifact_dir(self, *parts: str) -> Path:
        p = self.artifacts.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def logs(self) -> Path:
        return self.artifact_dir("logs")

    @cached_property
    def db(self) -> sqlite_utils.Database:
        from core.store import db as db_mod

        return db_mod.connect(self.db_path)

    @cached_property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.config_path)

    def transaction(self):
        from core.store import db as db_mod

        return db_mod.transaction(self.db)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.conn.close()
            del self.__dict__["db"]

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"
