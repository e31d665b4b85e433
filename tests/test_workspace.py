"""Workspace, config schema and migrations."""

import pytest

from core.errors import ConfigError, WorkspaceError
from core.store import config as config_mod
from core.store import migrations
from core.store.db import connect, transaction
from core.store.workspace import Workspace


def test_init_creates_layout_and_is_idempotent(tmp_path):
    ws = Workspace.init(tmp_path / "w")
    assert (ws.root / "mirage.toml").is_file() and (ws.root / "artifacts").is_dir()
    assert ws.db.journal_mode == "wal"
    ws.db.execute("insert into models (name, kind, created_at) values ('x', 'hf', 'now')")
    ws.close()
    again = Workspace.init(tmp_path / "w")
    assert again.db.execute("select count(*) from models").fetchone()[0] == 1


def test_new_database_gets_16k_pages_and_an_old_one_keeps_its_own(tmp_path):
    import sqlite3

    db = connect(tmp_path / "new.db")
    assert db.execute("pragma page_size").fetchone()[0] == 16384 and db.journal_mode == "wal"
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("create table t (x)")  # an existing database, made with SQLite's 4 KB default
    old.close()
    assert connect(tmp_path / "old.db").execute("pragma page_size").fetchone()[0] == 4096


def test_open_missing_workspace_names_it(tmp_path):
    with pytest.raises(WorkspaceError, match="not a mirage workspace"):
        Workspace.open(tmp_path / "nothing")


def test_migrations_apply_on_blank_database(tmp_path):
    db = connect(tmp_path / "a.db")
    names = migrations.applied(db)
    assert names == [m.__name__ for m in migrations.MIGRATIONS]
    assert {"datasets", "examples", "items", "jobs", "generations", "scores"} <= set(db.table_names())
    assert migrations.migrate(db) == []  # second open applies nothing


def test_migrations_upgrade_an_older_database(tmp_path):
    path = tmp_path / "old.db"
    db = connect(path, migrate=False)
    db.conn.execute("create table _migrations (name text primary key, applied_at text not null)")
    first = migrations.MIGRATIONS[0]
    first(db)
    db.conn.execute("insert into _migrations values (?, 'then')", (first.__name__,))
    db.conn.execute("insert into models (name, kind, created_at) values ('kept', 'hf', 'then')")
    db.conn.close()
    db = connect(path)
    assert migrations.applied(db) == [m.__name__ for m in migrations.MIGRATIONS]
    assert db.execute("select name from models").fetchall() == [("kept",)]


def test_a_failed_migration_script_leaves_nothing_behind(tmp_path, monkeypatch):
    # The property sqlite-utils >= 4.0 gives: `executescript` inside the migration's transaction
    # does not commit it, so a migration that fails half-way is rolled back whole.
    db = connect(tmp_path / "f.db")

    def m999_half_done(db):
        db.executescript("create table half_done (x); insert into half_done values (1);")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_half_done])
    with pytest.raises(RuntimeError, match="boom"):
        migrations.migrate(db)
    assert "half_done" not in db.table_names()
    assert "m999_half_done" not in migrations.applied(db)


def test_workspace_created_then_reopened_is_fully_migrated(tmp_path):
    Workspace.init(tmp_path / "w").close()
    ws = Workspace.open(tmp_path / "w")
    assert migrations.applied(ws.db) == [m.__name__ for m in migrations.MIGRATIONS]
    ws.close()


def test_transaction_rolls_back_everything(tmp_path):
    db = connect(tmp_path / "t.db")
    with pytest.raises(RuntimeError):
        with transaction(db):
            db.execute("insert into models (name, kind, created_at) values ('a', 'hf', 'now')")
            with transaction(db):
                db.execute("insert into models (name, kind, created_at) values ('b', 'hf', 'now')")
            raise RuntimeError("boom")
    assert db.execute("select count(*) from models").fetchone()[0] == 0


def test_config_rejects_unknown_keys(tmp_path):
    p = tmp_path / "mirage.toml"
    p.write_text("[roles]\nteachr = 'x'\n")
    with pytest.raises(ConfigError, match=r"mirage.toml: roles: unknown key 'teachr'"):
        config_mod.load(p)


def test_config_types_and_env_override(tmp_path):
    p = tmp_path / "mirage.toml"
    p.write_text("[defaults]\nmax_new_tokens = 'many'\n")
    with pytest.raises(ConfigError, match="max_new_tokens: expected int"):
        config_mod.load(p)
    p.write_text("[roles]\nteacher = 'gpt'\n[defaults]\nkshot = 5\n")
    cfg = config_mod.load(p, environ={"MIRAGE_DEFAULTS_KSHOT": "1"})
    assert cfg.roles.teacher == "gpt" and cfg.defaults.kshot == 1


def test_config_nearest_file_wins(tmp_path, monkeypatch):
    user = tmp_path / "xdg" / "mirage"
    user.mkdir(parents=True)
    (user / "config.toml").write_text("[roles]\nteacher = 'user'\nbase = 'user-base'\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    ws_toml = tmp_path / "mirage.toml"
    ws_toml.write_text("[roles]\nteacher = 'workspace'\n")
    cfg = config_mod.load(ws_toml, environ={})
    assert (cfg.roles.teacher, cfg.roles.base) == ("workspace", "user-base")
