"""A study's plan and its running state: the names and sizes of one demo pass, the steps, the Study.

`Plan` names everything the study creates in the workspace (the full demo, or `--quick` whose names
end in -quick); `Study` is one run of the study job: it drives progress generators and child jobs
(kinds generate / coverage / finetune / score, `parent_id` = the study) and serves the teacher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import Cancelled, JobError, MirageError
from core.runtime import jobs, processes, progress
from core.runtime.progress import Progress, Work
from core.store.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
TEACHER_PACKAGED = "smollm2-135m-instruct"
BASE_PACKAGED = "gemma3-270m"
# The port the demo's teacher is served on. Fixed, because an endpoint's fingerprint (and so its
# cached generations) includes its URL; another free port is used only if this one is taken.
TEACHER_PORT = 8607
SYNTHETIC_TASK = "geography"


@dataclass
class Plan:
    """Names and sizes of one study: the full demo or the --quick pass (its names end in -quick)."""

    quick: bool = False
    samples: Path = SAMPLES
    suffix: str = ""
    per_task: int | None = None  # QA items per task (None: all)
    mc_items: int | None = None
    code_items: int | None = None
    style_items: int | None = None
    broad_examples: int | None = None  # recorded broad teacher answers imported (None: all)
    synthetic_examples: int | None = None
    max_steps: int = 20
    batch_size: int = 4
    max_length: int = 256
    lr: float = 1e-3
    max_new_tokens: dict[str, int] = field(default_factory=lambda: {"qa": 24, "mc": 8, "code": 128, "prompts": 96})
    batch_generate: int = 16

    @classmethod
    def make(cls, quick: bool = False, samples: str | Path | None = None) -> Plan:
        p = cls(quick=quick, samples=Path(samples) if samples else SAMPLES)
        if quick:
            p.suffix = "-quick"
            p.per_task, p.mc_items, p.code_items, p.style_items = 6, 10, 3, 6
            p.broad_examples, p.synthetic_examples = 48, 24
            p.max_steps, p.batch_size, p.max_length = 4, 2, 256
            p.max_new_tokens = {"qa": 16, "mc": 6, "code": 64, "prompts": 48}
        return p

    def to_config(self) -> dict:
        return {"quick": self.quick, "samples": str(self.samples)}

    # names in the workspace
    def suite(self, kind: str) -> str:
        return {"qa": "qa", "mc": "mc", "code": "code", "prompts": "style"}[kind] + self.suffix

    @property
    def suites(self) -> list[tuple[str, str]]:
        return [(k, self.suite(k)) for k in ("qa", "mc", "code", "prompts")]

    @property
    def data(self) -> str:
        return "imitation" + self.suffix

    @property
    def task_subset(self) -> str:
        return f"imitation-{SYNTHETIC_TASK}" + self.suffix

    @property
    def teacher(self) -> str:
        return "teacher"  # the served SmolLM2, called through the openai client

    @property
    def base(self) -> str:
        return BASE_PACKAGED

    @property
    def broad_model(self) -> str:
        return "imitation-broad" + self.suffix

    @property
    def task_model(self) -> str:
        return f"imitation-{SYNTHETIC_TASK}" + self.suffix

    @property
    def models(self) -> list[str]:
        return [self.base, self.broad_model, self.task_model, self.teacher]


@dataclass
class Step:
    id: str
    title: str
    fn: Callable[[Study], dict]


class Study:
    """One run of the study handler: the job context, the plan and the teacher server it may start."""

    def __init__(self, ctx, plan: Plan):
        self.ctx = ctx
        self.ws: Workspace = ctx.ws
        self.plan = plan
        self.server = None  # the teacher's `transformers serve` process, started only when needed

    def progress_note(self, every_s: float = 5.0) -> Callable[[Progress], None]:
        """A callback recording progress as messages only (throttled), so the study's own step /
        total_steps keep counting study steps (what the Jobs screen shows)."""

        def note(p: Progress) -> None:
            count = p.count_text()
            # Generation's details already say "model: 27/171"; a second copy read "27/171 27/171".
            of = f" {count}" if p.total and count not in (p.detail or "") else ""
            self.ctx.event(message=f"  {p.detail or 'working'}{of}")

        return progress.throttled(note, every_s)

    def drive(self, gen: Work, *, every_s: float = 5.0, on_progress: Callable[[Progress], None] | None = None):
        """Run a progress generator in this job (cancellable), noting its progress; returns its result."""
        note = self.progress_note(every_s)

        def both(p: Progress) -> None:
            on_progress(p)
            note(p)

        return progress.run(gen, note if on_progress is None else both, cancel=self.ctx.cancel)

    # -- child jobs -----------------------------------------------------------------------------------------
    def child(self, kind: str, name: str, config: dict) -> dict:
        """Run a child job to completion, or reuse one that finished with the same config."""
        ws = self.ws
        existing = [j for j in jobs.list_jobs(ws, kind=kind) if j["name"] == name and j["config"] == config]
        job_id = None
        for j in reversed(existing):
            if j["status"] == "done":
                return {"job": j["id"], "cached": True, "summary": last_data(ws, j["id"])}
            if j["status"] in jobs.ACTIVE:
                job_id = j["id"]  # an earlier study's child still running: wait for it
                break
            if j["status"] == "interrupted":
                jobs.resume(ws, j["id"])  # continues from its last checkpoint
                job_id = j["id"]
                break
        if job_id is None:
            job_id = jobs.create(ws, kind, name, config, parent_id=self.ctx.id)
            jobs.spawn(ws, job_id)
        self.ctx.event(message=f"waiting for {kind} job {job_id} ({name})", child=job_id)

        def note(p: Progress) -> None:
            if p.detail:
                self.ctx.event(message=f"  {name}: {p.detail}", child=job_id)

        try:
            job = progress.run(follow(ws, job_id), progress.throttled(note, 15), cancel=self.ctx.cancel)
        except Cancelled:
            try:
                jobs.cancel(ws, job_id)
            except MirageError:
                pass
            raise
        if job["status"] != "done":
            raise JobError(
                f"{kind} job {job_id} ({name}) {job['status']}"
                + (f": {job['error']}" if job.get("error") else "")
                + f"; see `mirage jobs log {job_id}`, then rerun `mirage demo` to continue"
            )
        return {"job": job_id, "cached": False, "summary": last_data(ws, job_id)}

    # -- the teacher endpoint ---------------------------------------------------------------------------------
    def ensure_teacher(self) -> None:
        """Serve the packaged teacher on 127.0.0.1 and register it as an OpenAI-compatible model."""
        from core.models import serving

        if self.server is not None:
            return
        port = self._teacher_port()
        self.ctx.event(message=f"starting the teacher: transformers serve on 127.0.0.1:{port}")
        self.server = self.drive(serving.start(self.ws, TEACHER_PACKAGED, port=port), every_s=10)
        serving.register_endpoint(self.ws, self.server, self.plan.teacher)
        self.ctx.event(message=f"teacher '{self.plan.teacher}' ready at {self.server.base_url}")

    def _teacher_port(self) -> int:
        state = self.ws.artifact_dir("demo") / "teacher_port"
        port = int(state.read_text()) if state.exists() else TEACHER_PORT
        if not processes.port_free(port):
            port = processes.free_port()
        state.write_text(str(port))
        return port

    def stop_teacher(self) -> None:
        if self.server is not None:
            from core.models import serving

            serving.stop(self.ws, self.server)
            self.server = None


def follow(ws: Workspace, job_id: int, *, every_s: float = 0.5) -> Work[dict]:
    """Watch another job until it ends; returns its final row.

    Each poll yields the job's progress as a detail ("12/40, loss 1.234", empty while it has no
    step count) and no total: the watcher counts its own steps, not the child's.
    """
    while True:
        job = jobs.get_job(ws, job_id)
        if job["status"] not in jobs.ACTIVE:
            return job
        detail = ""
        if job["total_steps"]:
            loss = f", loss {job['loss']:.3f}" if job["loss"] is not None else ""
            detail = f"{job['step']}/{job['total_steps']}{loss}"
        yield Progress(job["step"] or 0, None, detail)
        time.sleep(every_s)


def last_data(ws: Workspace, job_id: int) -> dict:
    """The extra data of a job's last event that carried any (a handler's summary)."""
    for ev in reversed(jobs.events(ws, job_id)):
        if ev["data"]:
            return ev["data"]
    return {}
