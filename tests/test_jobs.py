"""The background job runner: lifecycle, kill -9 then resume, cancel, lanes."""

import json
import os
import signal
import time

import pytest

from core.errors import JobError
from core.runtime import jobs


def wait_for(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_foreground_job_runs_to_done(ws):
    seen = []
    jid = jobs.submit(ws, "selftest", "t", {"steps": 4, "sleep": 0}, detach=False, on_event=seen.append)
    job = jobs.get_job(ws, jid)
    assert (job["status"], job["step"], job["total_steps"]) == ("done", 4, 4)
    assert job["loss"] == pytest.approx(0.25)
    assert [e["step"] for e in seen if e.get("step")] == [1, 2, 3, 4]


def test_failed_job_records_error(ws):
    jid = jobs.submit(ws, "selftest", "t", {"steps": 1, "sleep": 0, "fail": True}, detach=False)
    job = jobs.get_job(ws, jid)
    assert job["status"] == "failed" and job["error"] == "asked to fail"


def test_kill_9_reads_interrupted_then_resume_continues(ws):
    jid = jobs.submit(ws, "selftest", "t", {"steps": 40, "sleep": 0.05})
    wait_for(lambda: jobs.get_job(ws, jid)["step"] >= 5)
    os.kill(jobs.get_job(ws, jid)["pid"], signal.SIGKILL)
    wait_for(lambda: jobs.get_job(ws, jid)["status"] == "interrupted")
    stopped_at = jobs.get_job(ws, jid)["step"]
    assert 5 <= stopped_at < 40
    jobs.resume(ws, jid)
    wait_for(lambda: jobs.get_job(ws, jid)["status"] == "done")
    steps = [e["step"] for e in jobs.events(ws, jid) if e["step"]]
    # every step recorded (one the kill caught before its checkpoint is redone, so recorded twice),
    # and the resumed run picks up after the checkpoint
    assert steps[-1] == 40 and sorted(set(steps)) == list(range(1, 41))
    with pytest.raises(JobError, match="done"):
        jobs.resume(ws, jid)


def test_cancel_running_job(ws):
    jid = jobs.submit(ws, "selftest", "t", {"steps": 1000, "sleep": 0.05})
    wait_for(lambda: jobs.get_job(ws, jid)["status"] == "running")
    assert jobs.cancel(ws, jid)["status"] == "cancelled"
    assert jobs.get_job(ws, jid)["step"] < 1000


def test_lane_runs_one_at_a_time(ws):
    a = jobs.submit(ws, "selftest", "a", {"steps": 15, "sleep": 0.05}, lane="train")
    b = jobs.submit(ws, "selftest", "b", {"steps": 2, "sleep": 0.0}, lane="train")
    wait_for(lambda: jobs.get_job(ws, b)["status"] == "done")
    ja, jb = jobs.get_job(ws, a), jobs.get_job(ws, b)
    assert ja["status"] == "done"
    assert jb["started_at"] >= ja["finished_at"]
    assert any("queued behind job" in (e["message"] or "") for e in jobs.events(ws, b))


def jobs_cli(ws, capsys, *args):
    from core.cli import main

    with pytest.raises(SystemExit) as e:
        main(["jobs", *args, "-w", str(ws.root)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_cancel_resume_log_take_a_name_or_an_id(ws, capsys):
    a = jobs.submit(ws, "selftest", "nightly", {"steps": 2, "sleep": 0, "fail": True}, detach=False)
    code, out, err = jobs_cli(ws, capsys, "log", "nightly")
    assert code == 0 and "failed: asked to fail" in out
    code, out, err = jobs_cli(ws, capsys, "resume", "nightly", "--foreground")
    assert (code, out.strip()) == (0, f"job {a}: failed")
    long = jobs.submit(ws, "selftest", "long", {"steps": 1000, "sleep": 0.05})
    wait_for(lambda: jobs.get_job(ws, long)["status"] == "running")
    code, out, err = jobs_cli(ws, capsys, "cancel", "long", "--json")
    assert code == 0 and (json.loads(out)["id"], json.loads(out)["status"]) == (long, "cancelled")
    b = jobs.submit(ws, "selftest", "nightly", {"steps": 1, "sleep": 0}, detach=False)
    for cmd in ("cancel", "resume", "log"):
        code, out, err = jobs_cli(ws, capsys, cmd, "nightly")
        assert code == 1 and err.strip() == f"error: 2 jobs are named 'nightly' (ids {a}, {b}): give the id"
    code, out, err = jobs_cli(ws, capsys, "log", str(b), "--json")
    assert code == 0 and json.loads(out)[-1]["message"] == "done"
    code, out, err = jobs_cli(ws, capsys, "log", "weekly")
    assert code == 1 and err.startswith("error: no job 'weekly'")


def test_given_keeps_set_options_in_order_and_drops_none():
    # False and 0 are values a user set; only None stands for "the callee's default".
    opts = {"b": 0, "a": None, "c": False, "d": "x"}
    assert list(jobs.given(opts).items()) == [("b", 0), ("c", False), ("d", "x")]
    # With names: only those, in the names' order; a name missing from the config is skipped.
    assert list(jobs.given(opts, ("d", "a", "b", "missing")).items()) == [("d", "x"), ("b", 0)]


def test_a_progress_counted_in_bytes_reads_as_a_percentage_not_as_rows(capsys, monkeypatch):
    """An import's study note read "48 imported 36463/40208" (file bytes beside a row count)."""
    from core.runtime import progress
    from core.runtime.progress import Progress

    assert Progress(36463, 40208, "48 imported", unit="bytes").count_text() == "91%"
    assert Progress(27, 171, "base").count_text() == "27/171"
    assert Progress(5, None, "x", unit="bytes").count_text() == ""

    def work():
        yield Progress(36463, 40208, "48 imported", unit="bytes")
        return 1

    # stderr is not a terminal here: the plain-line form, shown at once rather than after 10 s.
    monkeypatch.setattr(progress, "_after", lambda cb, seconds: cb)
    assert progress.drive(work(), "import") == 1
    assert capsys.readouterr().err.splitlines() == ["import: 91% 48 imported"]
