"""Background jobs: finetunes, generation batches, coverage and collection, each a separate process.

A job is a row in `jobs` plus a handler (`HANDLERS[kind]`, "module:function") that receives a
`JobContext`. The runner (`python -m core.runtime.jobs WORKSPACE ID`) waits for its lane (jobs in one lane
run one at a time), marks the job running, calls the handler, and records the end state. Progress
goes to `job_events` and the job row. A job whose process died without recording an end (kill -9,
power loss) is reported as `interrupted`, never as done; `resume` starts it again and the handler
continues from its own last checkpoint.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import Cancelled, JobError, MirageError, NotFound
from core.runtime import progress
from core.runtime.processes import process_alive, process_start
from core.runtime.secrets import redact, redact_data
from core.store.workspace import Workspace, dumps, now

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")

# kind -> "module:function"; the function takes a JobContext. Modules register their kinds here.
HANDLERS: dict[str, str] = {
    "finetune": "core.finetune.runs:run_job",
    "generate": "core.models.generation:run_job",
    "coverage": "core.coverage.compute:run_job",
    "collect": "core.models.collect:run_job",
    "score": "core.scores.scoring:run_job",
    "study": "core.study.job:run_job",
    "selftest": "core.runtime.jobs:selftest_job",
}
# Lanes serialise jobs that compete for the same resource (one training run at a time on a CPU).
DEFAULT_LANES = {"finetune": "train"}


# -- records ---------------------------------------------------------------------------------------
def _row_to_job(row: dict) -> dict:
    job = dict(row)
    job["config"] = json.loads(job.get("config") or "{}")
    return job


def reconcile(ws: Workspace) -> None:
    """Mark jobs whose process is gone without an end state as interrupted."""
    rows = list(ws.db.query("select id, pid, pid_started, status from jobs where status in ('queued','running')"))
    for r in rows:
        if r["pid"] is None and r["status"] == "queued":
            continue  # created, runner not started yet (or a foreground job about to start)
        if not process_alive(r["pid"], r["pid_started"]):
            ws.db.execute(
                "update jobs set status='interrupted', updated_at=? where id=? and status in ('queued','running')",
                [now(), r["id"]],
            )


def list_jobs(ws: Workspace, *, kind: str | None = None) -> list[dict]:
    reconcile(ws)
    sql = "select * from jobs"
    args: list[Any] = []
    if kind:
        sql += " where kind = ?"
        args.append(kind)
    sql += " order by id"
    return [_row_to_job(r) for r in ws.db.query(sql, args)]


def get_job(ws: Workspace, job_id: int) -> dict:
    reconcile(ws)
    rows = list(ws.db.query("select * from jobs where id = ?", [int(job_id)]))
    if not rows:
        raise NotFound(f"no job {job_id} in {ws.root}")
    return _row_to_job(rows[0])


def find_job(ws: Workspace, ref: str | int) -> dict:
    """The job whose id is `ref`, else the one job named `ref`; an ambiguous name lists the ids."""
    ref = str(ref).strip()
    if ref.isdigit():
        rows = list(ws.db.query("select id from jobs where id = ?", [int(ref)]))
        if rows:
            return get_job(ws, rows[0]["id"])
    ids = [r["id"] for r in ws.db.query("select id from jobs where name = ? order by id", [ref])]
    if not ids:
        raise NotFound(f"no job '{ref}' in {ws.root} (give an id or a name from `mirage jobs`)")
    if len(ids) > 1:
        raise JobError(f"{len(ids)} jobs are named '{ref}' (ids {', '.join(map(str, ids))}): give the id")
    return get_job(ws, ids[0])


def events(ws: Workspace, job_id: int, *, after_id: int = 0, limit: int | None = None) -> list[dict]:
    sql = "select * from job_events where job_id = ? and id > ? order by id"
    args: list[Any] = [int(job_id), after_id]
    if limit:
        sql += " limit ?"
        args.append(limit)
    out = []
    for r in ws.db.query(sql, args):
        r = dict(r)
        r["data"] = json.loads(r["data"]) if r.get("data") else {}
        out.append(r)
    return out


def public_view(job: dict) -> dict:
    """The JSON shape scripts rely on (plus a few extras)."""
    return {
        "id": job["id"],
        "name": job["name"],
        "kind": job["kind"],
        "status": job["status"],
        "pid": job["pid"],
        "step": job["step"],
        "total_steps": job["total_steps"],
        "loss": job["loss"],
        "error": job.get("error"),
        "created_at": job["created_at"],
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
    }


def create(
    ws: Workspace, kind: str, name: str, config: dict, *, lane: str | None = None, parent_id: int | None = None
) -> int:
    if kind not in HANDLERS:
        raise JobError(f"unknown job kind '{kind}'")
    t = now()
    cur = ws.db.execute(
        "insert into jobs (name, kind, status, config, lane, parent_id, created_at, updated_at)"
        " values (?, ?, 'queued', ?, ?, ?, ?, ?)",
        [name, kind, dumps(config), lane or DEFAULT_LANES.get(kind), parent_id, t, t],
    )
    return cur.lastrowid


# -- control ----------------------------------------------------------------------------------------
def spawn(ws: Workspace, job_id: int) -> int:
    """Start the runner for `job_id` as a detached process (it outlives the caller)."""
    log = open(ws.logs / f"job-{job_id}.log", "ab")
    env = dict(os.environ)
    root_dir = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.runtime.jobs", str(ws.root), str(job_id)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        env=env,
    )
    log.close()
    # Record the pid at once so a runner that dies before it starts still reads as interrupted.
    ws.db.execute(
        "update jobs set pid=?, pid_started=?, updated_at=? where id=? and status='queued'",
        [proc.pid, process_start(proc.pid), now(), job_id],
    )
    return proc.pid


def given(options: Mapping[str, Any], names: Iterable[str] | None = None) -> dict:
    """The options that were set (not None), only `names` if given, in their order.

    One rule for what a CLI command passes on (to a job's config, or to the work it drives here)
    and what a handler reads back from that config: None means "the callee's default", so it is
    left out rather than passed, and a job stored without it runs with the same default.
    """
    return {k: options[k] for k in (options if names is None else names) if options.get(k) is not None}


def submit(
    ws: Workspace,
    kind: str,
    name: str,
    config: dict,
    *,
    detach: bool = True,
    lane: str | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> int:
    """Create a job and run it: detached in its own process, or here in the foreground."""
    job_id = create(ws, kind, name, config, lane=lane)
    if detach:
        spawn(ws, job_id)
    else:
        run(ws, job_id, on_event=on_event)
    return job_id


def cancel(ws: Workspace, job_id: int, *, wait: float = 15.0) -> dict:
    job = get_job(ws, job_id)
    if job["status"] not in ACTIVE:
        raise JobError(f"job {job_id} is {job['status']}, not running or queued")
    pid = job["pid"]
    if process_alive(pid, job["pid_started"]) and pid != os.getpid():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_alive(pid, job["pid_started"]):
            time.sleep(0.1)
        if process_alive(pid, job["pid_started"]):
            os.kill(pid, signal.SIGKILL)
    ws.db.execute(
        "update jobs set status='cancelled', finished_at=coalesce(finished_at, ?), updated_at=?"
        " where id=? and status in ('queued','running','interrupted')",
        [now(), now(), job_id],
    )
    return get_job(ws, job_id)


def resume(ws: Workspace, job_id: int, *, detach: bool = True, on_event: Callable[[dict], None] | None = None) -> dict:
    job = get_job(ws, job_id)
    if job["status"] in ACTIVE:
        raise JobError(f"job {job_id} is already {job['status']}")
    if job["status"] == "done":
        raise JobError(f"job {job_id} is done; nothing to resume")
    ws.db.execute(
        "update jobs set status='queued', pid=null, pid_started=null, error=null, finished_at=null,"
        " updated_at=? where id=?",
        [now(), job_id],
    )
    _event(ws, job_id, message="resumed")
    if detach:
        spawn(ws, job_id)
    else:
        run(ws, job_id, on_event=on_event)
    return get_job(ws, job_id)


# -- the runner ---------------------------------------------------------------------------------------
def _event(ws: Workspace, job_id: int, **fields) -> dict:
    known = {
        k: fields.pop(k)
        for k in ("step", "total_steps", "loss", "lr", "tokens_per_s", "eta_s", "message")
        if k in fields
    }
    # Messages and extras may carry an endpoint's words; what reaches mirage.db is redacted.
    if known.get("message"):
        known["message"] = redact(known["message"])
    if fields:
        fields = redact_data(fields)
    row = {"job_id": job_id, "time": now(), **known, "data": dumps(fields) if fields else None}
    ws.db.execute(
        f"insert into job_events ({', '.join(row)}) values ({', '.join('?' for _ in row)})",
        list(row.values()),
    )
    sets = {k: known[k] for k in ("step", "total_steps", "loss") if known.get(k) is not None}
    sets["updated_at"] = now()
    ws.db.execute(
        f"update jobs set {', '.join(f'{k}=?' for k in sets)} where id=?",
        [*sets.values(), job_id],
    )
    return {**row, "data": fields}


@dataclass
class JobContext:
    """What a handler gets: the workspace, its job row and config, a cancel event, an event sink."""

    ws: Workspace
    job: dict
    cancel: threading.Event = field(default_factory=threading.Event)
    on_event: Callable[[dict], None] | None = None

    @property
    def id(self) -> int:
        return self.job["id"]

    @property
    def config(self) -> dict:
        return self.job["config"]

    @property
    def dir(self) -> Path:
        """The job's own folder for checkpoints and outputs."""
        return self.ws.artifact_dir("jobs", str(self.id))

    def event(self, **fields) -> None:
        """Record progress: step, total_steps, loss, lr, tokens_per_s, eta_s, message, and any extras."""
        ev = _event(self.ws, self.id, **fields)
        if self.on_event:
            self.on_event(ev)

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"job {self.id} cancelled")

    def drive(self, gen, *, every_s: float = 1.0):
        """Run a core progress generator, recording its progress (throttled) as events, metrics included."""

        def record(p: progress.Progress) -> None:
            self.event(step=p.done, total_steps=p.total, message=p.detail or None, **(p.metrics or {}))

        return progress.run(gen, progress.throttled(record, every_s), cancel=self.cancel)


def _wait_for_lane(ws: Workspace, job: dict, cancel: threading.Event) -> None:
    lane = job.get("lane")
    if not lane:
        return
    announced = False
    while not cancel.is_set():
        reconcile(ws)
        ahead = list(
            ws.db.query(
                "select id, status from jobs where lane = ? and id != ? and"
                " (status = 'running' or (status = 'queued' and id < ? and pid is not null))",
                [lane, job["id"], job["id"]],
            )
        )
        if not ahead:
            return
        if not announced:
            _event(ws, job["id"], message=f"queued behind job {ahead[0]['id']} (lane '{lane}')")
            announced = True
        time.sleep(1.0)
    raise Cancelled(f"job {job['id']} cancelled while queued")


def _resolve(kind: str) -> Callable[[JobContext], Any]:
    mod, _, fn = HANDLERS[kind].partition(":")
    return getattr(importlib.import_module(mod), fn)


def run(ws: Workspace, job_id: int, *, on_event: Callable[[dict], None] | None = None) -> dict:
    """Run a job in this process to its end state. SIGTERM / Ctrl-C cancel it cleanly."""
    job = get_job(ws, job_id)
    ctx = JobContext(ws, job, on_event=on_event)
    pid = os.getpid()
    ws.db.execute(
        "update jobs set pid=?, pid_started=?, updated_at=? where id=?",
        [pid, process_start(pid), now(), job_id],
    )
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum, frame):
            ctx.cancel.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    status, error = "failed", None
    try:
        _wait_for_lane(ws, job, ctx.cancel)
        ws.db.execute(
            "update jobs set status='running', started_at=coalesce(started_at, ?), updated_at=? where id=?",
            [now(), now(), job_id],
        )
        _resolve(job["kind"])(ctx)
        if ctx.cancel.is_set():
            raise Cancelled("cancelled")
        status = "done"
    except Cancelled:
        status = "cancelled"
    except MirageError as e:
        error = e.message
    except MemoryError:
        error = "out of memory: lower the batch size or max length"
    except Exception as e:  # recorded in the job and its log; the job must not show as finished
        error = f"{type(e).__name__}: {e}"
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    error = redact(error) if error else None
    ws.db.execute(
        "update jobs set status=?, error=?, finished_at=?, updated_at=? where id=?",
        [status, error, now(), now(), job_id],
    )
    _event(ws, job_id, message=status if not error else f"{status}: {error}")
    return get_job(ws, job_id)


def _write_checkpoint(path: Path, text: str) -> None:
    """Replace `path` whole: `write_text` truncates first, so a kill -9 in between left an empty file
    that the resumed job could not read (it failed at once instead of continuing)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def selftest_job(ctx: JobContext) -> None:
    """A tiny job used by tests of the runner itself: counts to `steps`, `sleep` s a step."""
    steps = int(ctx.config.get("steps", 5))
    start = int(ctx.config.get("start_from_checkpoint", 0))
    ckpt = ctx.dir / "step.txt"
    done = int(ckpt.read_text()) if ckpt.exists() else start
    for step in range(done + 1, steps + 1):
        ctx.check_cancel()
        time.sleep(float(ctx.config.get("sleep", 0.05)))
        # The event goes first: a kill between the two redoes this step on resume (recorded twice),
        # where the other order would leave a checkpointed step with no event.
        ctx.event(step=step, total_steps=steps, loss=1.0 / step)
        _write_checkpoint(ckpt, str(step))
    if ctx.config.get("fail"):
        raise JobError("asked to fail")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m core.runtime.jobs WORKSPACE JOB_ID", file=sys.stderr)
        return 2
    ws = Workspace.open(argv[0])
    job = run(ws, int(argv[1]))
    return 0 if job["status"] in ("done", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
