"""An API key never leaves the process in text: CLI errors, mirage.db, job views and logs, crash reports.

The teacher is a real HTTP server on 127.0.0.1 that answers 400 and quotes the key it was sent, as
hosted APIs do. The key is not shaped like an OpenAI key and its variable's name is not
secret-looking, so only redacting the key's own value keeps it out.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from fake_openai import FakeOpenAI, Faults

from core.cli import main
from core.models import registry as models
from core.runtime import jobs
from core.runtime.crash import log_dir, write_report
from core.runtime.secrets import redact, remember

KEY = "mk-live-7f3a9c2e1b4d8a6f"


@pytest.fixture
def leaky(ws, monkeypatch):
    monkeypatch.setenv("TEACHER_CRED", KEY)
    srv = FakeOpenAI(faults=Faults(echo_key_400=10_000)).start()
    models.register(
        ws, "teacher", "openai", {"base_url": srv.base_url, "model": "fake-model", "api_key_env": "TEACHER_CRED"}
    )
    yield srv
    srv.stop()


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def all_db_text(ws) -> str:
    """Every text value of every table of mirage.db, read through a separate connection."""
    con = sqlite3.connect(ws.root / "mirage.db")
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        parts = []
        for t in tables:
            for row in con.execute(f'select * from "{t}"'):
                parts += [v for v in row if isinstance(v, str)]
        return "\n".join(parts)
    finally:
        con.close()


def user_logs() -> str:
    folder = log_dir()
    return "\n".join(p.read_text() for p in folder.glob("*")) if folder.is_dir() else ""


def test_a_400_that_echoes_the_key_leaks_it_nowhere(ws, leaky, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is one?\nWhat is two?\n")
    root = str(ws.root)
    code, out, err = run_cli(
        capsys, "-w", root, "collect", "--teacher", "teacher", "--prompts", str(prompts), "--name", "a"
    )
    assert code != 0 and "400" in err and "Incorrect API key provided" in err
    assert KEY not in out + err and "Bearer mk-" not in err

    code, out, err = run_cli(
        capsys, "-w", root, "collect", "--teacher", "teacher", "--prompts", str(prompts), "--name", "b", "--detach"
    )
    assert code == 0
    jid = max(j["id"] for j in jobs.list_jobs(ws))
    end = time.monotonic() + 60
    while jobs.get_job(ws, jid)["status"] in jobs.ACTIVE:
        assert time.monotonic() < end, "the detached collect did not finish"
        time.sleep(0.1)
    job = jobs.get_job(ws, jid)
    assert job["status"] == "failed" and "Incorrect API key provided" in job["error"]

    code, listing, _ = run_cli(capsys, "-w", root, "jobs", "--json")
    assert code == 0 and json.loads(listing)
    code, log_json, _ = run_cli(capsys, "-w", root, "jobs", "log", str(jid), "--json")
    assert code == 0 and "Incorrect API key provided" in log_json
    code, log_text, _ = run_cli(capsys, "-w", root, "jobs", "log", str(jid))
    assert code == 0
    job_log = (ws.logs / f"job-{jid}.log").read_text() if (ws.logs / f"job-{jid}.log").exists() else ""
    for where, text in {
        "mirage.db": all_db_text(ws),
        "jobs --json": listing,
        "jobs log --json": log_json,
        "jobs log": log_text,
        "job log file": job_log,
        "crash reports": user_logs(),
    }.items():
        assert KEY not in text, f"the key leaked into {where}"


def test_redact_removes_remembered_values_and_bearer_tokens():
    remember("plain-value-42x")
    text = "got plain-value-42x; Authorization: Bearer abc.def-ghi_123456; sk-abcdefghijkl"
    assert redact(text, environ={}) == "got <redacted>; Authorization: Bearer <redacted>; sk-<redacted>"
    assert redact("short 12345", environ={}) == "short 12345"
    remember("12345")  # too short to be a key: redacting it would mangle ordinary text
    assert redact("short 12345", environ={}) == "short 12345"


def test_words_that_contain_sk_dash_are_not_keys():
    """`task-specific` holds `sk-specific`: the demo's step "[4/11] task-specific subset" was logged
    as "task-<redacted> subset". A key starts a word; the middle of one is ordinary text."""
    for text in ("[4/11] task-specific subset (geography)", "a desk-organiser and a risk-management plan"):
        assert redact(text, environ={}) == text
    assert redact("key: sk-abcdefghijkl, (sk-proj-abc_DEF-12345678)", environ={}) == (
        "key: sk-<redacted>, (sk-<redacted>)"
    )


def test_a_crash_report_never_holds_a_remembered_key():
    remember(KEY)
    try:
        raise RuntimeError(f"the server said: Incorrect API key provided: {KEY}")
    except RuntimeError as e:
        path = write_report(e, context="test")
    assert path is not None and "Incorrect API key provided" in path.read_text()
    assert KEY not in path.read_text()


def test_an_event_whose_numbers_equal_a_secret_is_recorded_and_redacted(ws):
    # Redacting the event's JSON text would turn the number into `<redacted>`: invalid JSON, a failed job.
    from core.runtime import jobs, secrets

    secrets.remember("123456789")
    jid = jobs.submit(ws, "selftest", "t", {"steps": 1, "sleep": 0.0}, detach=False)
    jobs._event(ws, jid, message="key 123456789", tokens=123456789, notes=["123456789", 2])
    message, row = ws.db.execute(
        "select message, data from job_events where job_id = ? order by id desc limit 1", [jid]
    ).fetchone()
    assert message == "key <redacted>"
    data = json.loads(row)
    assert data["tokens"] == 123456789 and data["notes"] == ["<redacted>", 2]


def test_a_secret_set_or_changed_after_first_use_is_redacted(monkeypatch):
    # redact() caches what it takes out; a key exported later in the process (a user's shell, a
    # test, a server started after the first message) must still be seen, and an old value forgotten.
    monkeypatch.delenv("LATE_API_KEY", raising=False)
    assert redact("said late-value-9f2k") == "said late-value-9f2k"
    monkeypatch.setenv("LATE_API_KEY", "late-value-9f2k")
    assert redact("said late-value-9f2k") == "said <LATE_API_KEY>"
    monkeypatch.setenv("LATE_API_KEY", "changed-value-3h7q")
    assert redact("said changed-value-3h7q, not late-value-9f2k") == "said <LATE_API_KEY>, not late-value-9f2k"
    monkeypatch.delenv("LATE_API_KEY")
    assert redact("said changed-value-3h7q") == "said changed-value-3h7q"
    remember("remembered-later-5x")  # remembered after the replacements were cached
    assert redact("said remembered-later-5x") == "said <redacted>"
    # An environment given by the caller is read as it is at each call, too.
    env = {"SERVICE_TOKEN": "tok-value-1234"}
    assert redact("tok-value-1234", environ=env) == "<SERVICE_TOKEN>"
    env["SERVICE_TOKEN"] = "tok-value-5678"
    assert redact("tok-value-1234 tok-value-5678", environ=env) == "tok-value-1234 <SERVICE_TOKEN>"
