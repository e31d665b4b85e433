"""The offline demo: the paper's imitation study end to end on the packaged models, as one resumable job.

`mirage demo` creates a workspace, then submits one job of kind "study" whose handler (`run_job`)
walks STEPS in order: import the samples, prepare the models, serve the teacher behind an
OpenAI-compatible endpoint, coverage, the task-specific subset, generations of base and teacher,
two LoRA imitation runs (broad and task-specific), their generations, scores and the report.
Heavy steps run as child jobs (kinds generate / coverage / finetune / score, `parent_id` = the
study), so the Jobs screen shows each one with its own progress and loss curve.

Every step is idempotent: a child job that already finished with the same config is reused, and
generations and scores are cached by their inputs, so a rerun (or `mirage jobs resume` after a
crash) skips finished work and only does what is missing. Each step records a "step" event with
what it did (`new` rows or steps, `cached`, `seconds`), which the tests and the README read.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import JobError, MirageError, NotFound
from core.runtime import jobs, processes
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


# -- steps ------------------------------------------------------------------------------------------------
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

    def drive(self, gen, *, every_s: float = 5.0):
        """Run a progress generator in this job, recording its progress as messages only, so the
        study's own step / total_steps keep counting study steps (what the Jobs screen shows)."""
        last = 0.0
        while True:
            self.ctx.check_cancel()
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            t = time.monotonic()
            if t - last >= every_s:
                of = f" {p.done}/{p.total}" if p.total else ""
                self.ctx.event(message=f"  {p.detail or 'working'}{of}")
                last = t

    # -- child jobs -----------------------------------------------------------------------------------------
    def child(self, kind: str, name: str, config: dict) -> dict:
        """Run a child job to completion, or reuse one that finished with the same config."""
        ws = self.ws
        existing = [j for j in jobs.list_jobs(ws, kind=kind) if j["name"] == name and j["config"] == config]
        job_id = None
        for j in reversed(existing):
            if j["status"] == "done":
                return {"job": j["id"], "cached": True, "summary": _last_data(ws, j["id"])}
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
        last_note = 0.0
        while True:
            try:
                self.ctx.check_cancel()
            except MirageError:
                try:
                    jobs.cancel(ws, job_id)
                except MirageError:
                    pass
                raise
            job = jobs.get_job(ws, job_id)
            if job["status"] not in jobs.ACTIVE:
                break
            t = time.monotonic()
            if t - last_note > 15 and job["total_steps"]:
                loss = f", loss {job['loss']:.3f}" if job["loss"] is not None else ""
                self.ctx.event(message=f"  {name}: {job['step']}/{job['total_steps']}{loss}", child=job_id)
                last_note = t
            time.sleep(0.5)
        if job["status"] != "done":
            raise JobError(
                f"{kind} job {job_id} ({name}) {job['status']}"
                + (f": {job['error']}" if job.get("error") else "")
                + f"; see `mirage jobs log {job_id}`, then rerun `mirage demo` to continue"
            )
        return {"job": job_id, "cached": False, "summary": _last_data(ws, job_id)}

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


def _last_data(ws: Workspace, job_id: int) -> dict:
    """The extra data of a job's last event that carried any (a handler's summary)."""
    for ev in reversed(jobs.events(ws, job_id)):
        if ev["data"]:
            return ev["data"]
    return {}


# -- step bodies ------------------------------------------------------------------------------------------
def _take(path: Path, n: int | None, *, per_task: int | None = None, key: str = "task") -> list[str]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if per_task:
        seen: dict[str, int] = {}
        out = []
        for ln in lines:
            t = json.loads(ln).get(key, "all")
            if seen.get(t, 0) < per_task:
                out.append(ln)
                seen[t] = seen.get(t, 0) + 1
        lines = out
    return lines[:n] if n else lines


def _sample_files(study: Study) -> dict[str, Path]:
    """The sample files this plan imports: the originals, or (quick) trimmed copies in the workspace."""
    p, src = study.plan, study.plan.samples
    files = {
        "qa": src / "qa.jsonl",
        "mc": src / "mc.csv",
        "code": src / "code.jsonl",
        "prompts": src / "prompts_style.jsonl",
        "broad": src / "teacher" / "broad.jsonl",
        "synthetic": src / "teacher" / f"synthetic_{SYNTHETIC_TASK}.jsonl",
    }
    for f in files.values():
        if not f.is_file():
            raise NotFound(f"{f}: sample file missing (see samples/README.md to regenerate it)")
    if not p.quick:
        return files
    out = study.ws.artifact_dir("demo", "samples-quick")
    trimmed = {
        "qa": _take(files["qa"], None, per_task=p.per_task),
        "code": _take(files["code"], p.code_items),
        "prompts": _take(files["prompts"], None, per_task=max(1, p.style_items // 5)),
        "broad": _take(files["broad"], p.broad_examples),
        "synthetic": _take(files["synthetic"], p.synthetic_examples),
    }
    result = {}
    for k, lines in trimmed.items():
        dest = out / files[k].name
        text = "\n".join(lines) + "\n"
        if not dest.exists() or dest.read_text(encoding="utf-8") != text:
            dest.write_text(text, encoding="utf-8")
        result[k] = dest
    mc_lines = files["mc"].read_text(encoding="utf-8").splitlines()
    dest = out / "mc.csv"
    text = "\n".join(mc_lines[: 1 + p.mc_items]) + "\n"
    if not dest.exists() or dest.read_text(encoding="utf-8") != text:
        dest.write_text(text, encoding="utf-8")
    result["mc"] = dest
    return result


def step_import(study: Study) -> dict:
    """Import the suites and the recorded teacher answers (re-importing the same files changes nothing)."""
    from core.data import ingest

    ws, plan = study.ws, study.plan
    files = _sample_files(study)
    new = 0
    for kind, name in plan.suites:
        res = study.drive(ingest.import_suite(ws, files[kind], name, fmt=kind, cancel=study.ctx.cancel))
        new += int(res.get("imported", 0))
    res = study.drive(
        ingest.import_data(ws, [files["broad"], files["synthetic"]], plan.data, fmt="messages", cancel=study.ctx.cancel)
    )
    new += int(res.get("imported", 0))
    return {"new": new, "cached": new == 0}


def step_models(study: Study) -> dict:
    """Convert the packaged GGUFs once (cached in the model cache across workspaces)."""
    from core.models import registry as models

    new = 0
    for name in (TEACHER_PACKAGED, BASE_PACKAGED):
        folder = models._converted_folder(name)
        m = models._manifest(folder)
        if m and models._check_converted(folder, m):
            continue
        study.drive(models.prepare_packaged(name))
        new += 1
    return {"new": new, "cached": new == 0}


def step_coverage(study: Study) -> dict:
    r = study.child(
        "coverage",
        f"coverage {study.plan.data} × {study.plan.suite('qa')}",
        {"data": study.plan.data, "suite": study.plan.suite("qa")},
    )
    return {"new": 0 if r["cached"] else 1, "cached": r["cached"], "job": r["job"]}


def step_subset(study: Study) -> dict:
    """The task-specific data: the imitation examples collected the NQ-synthetic way for one QA task."""
    from core.coverage import compute as coverage

    ws, plan = study.ws, study.plan
    if ws.db.execute("select 1 from datasets where name = ?", [plan.task_subset]).fetchone():
        return {"new": 0, "cached": True}
    # The NQ-synthetic collection is the task-specific data; coverage (the step before) shows how
    # closely it supports the task's eval items.
    res = coverage.make_subset(ws, plan.task_subset, plan.data, source=f"synthetic_{SYNTHETIC_TASK}.jsonl")
    study.ctx.event(message=f"subset {plan.task_subset}: {res['examples']} examples, {res['tokens']} tokens")
    return {"new": res["examples"], "cached": False, "examples": res["examples"]}


class _LazyLoaded:
    """A `(model, tokenizer)` pair for generation.generate(loaded=...) that loads only when a
    generation is actually missing: a rerun whose outputs are all cached never loads weights."""

    def __init__(self, ws: Workspace, name: str):
        self.ws, self.name = ws, name
        self.pair = None
        self.tokenizer = None

    def _load(self):
        if self.pair is None:
            from core.finetune import trainer as finetune
            from core.models import registry as models

            # bf16 where the CPU has it (faster matmuls, see DESIGN.md) for plain models. Not for
            # adapters: a LoRA merged into a bf16 Gemma generated 6x slower here than in fp32.
            adapter = models.get_model(self.ws, self.name)["kind"] == "adapter"
            dtype = "bfloat16" if finetune.cpu_has_bf16() and not adapter else None
            model, tok = models.load_causal_lm(self.ws, self.name, dtype=dtype)
            if hasattr(model, "merge_and_unload"):  # an adapter: fold LoRA in, generation runs faster
                model = model.merge_and_unload()
            self.pair = (model, tok)
        return self.pair

    def __iter__(self):
        return iter(self._load())

    def __getitem__(self, i):
        if i == 1 and self.pair is None:  # the chat template only: no weights needed yet
            if self.tokenizer is None:
                from core.models import generation
                from core.models import registry as models

                self.tokenizer = models._load_tokenizer(generation._tokenizer_folder(self.ws, self.name))
            return self.tokenizer
        return self._load()[i]

    def __bool__(self):
        return True


def _generate(study: Study, model: str) -> dict:
    """Generate `model`'s outputs on every suite in this process, loading the model once (cached)."""
    from core.models import generation
    from core.models import registry as models

    local = models.get_model(study.ws, model)["kind"] in models.LOADABLE
    loaded = _LazyLoaded(study.ws, model) if local else None
    new = 0
    for kind, suite in study.plan.suites:
        study.ctx.event(message=f"generating: {model} on {suite}")
        summary = study.drive(
            generation.generate(
                study.ws,
                model,
                suite,
                max_new_tokens=study.plan.max_new_tokens[kind],
                loaded=loaded,
                batch_size=study.plan.batch_generate,
                cancel=study.ctx.cancel,
            )
        )
        new += int(summary["generated"])
        study.ctx.event(
            message=f"{model} on {suite}: {summary['generated']} generated, {summary['cached']} cached"
            f" ({summary['seconds']:.0f} s)",
            model=model,
            suite=suite,
            generated=summary["generated"],
            cached=summary["cached"],
        )
    return {"new": new, "cached": new == 0}


def step_generate_base(study: Study) -> dict:
    return _generate(study, study.plan.base)


def step_generate_teacher(study: Study) -> dict:
    if _all_generated(study, study.plan.teacher):
        return {"new": 0, "cached": True}
    study.ensure_teacher()
    try:
        return _generate(study, study.plan.teacher)
    finally:
        study.stop_teacher()


def _all_generated(study: Study, model: str) -> bool:
    """True when every item of every suite has an output of `model` (so no server is needed)."""
    from core.data import datasets
    from core.models import generation
    from core.models import registry as models

    try:
        models.get_model(study.ws, model)
    except NotFound:
        return False
    for _, suite in study.plan.suites:
        n_items = sum(1 for _ in datasets.iter_items(study.ws, suite))
        if len(generation.outputs(study.ws, model, suite)) < n_items:
            return False
    return True


def _finetune(study: Study, name: str, data: str) -> dict:
    from core.finetune import trainer as finetune

    p = study.plan
    cfg = finetune.make_config(
        p.base,
        data,
        name=name,
        max_steps=p.max_steps,
        batch_size=p.batch_size,
        max_length=p.max_length,
        lr=p.lr,
        save_every=max(4, p.max_steps // 3),
    )
    r = study.child("finetune", name, cfg)
    return {"new": 0 if r["cached"] else p.max_steps, "cached": r["cached"], "job": r["job"]}


def step_finetune_broad(study: Study) -> dict:
    return _finetune(study, study.plan.broad_model, study.plan.data)


def step_finetune_task(study: Study) -> dict:
    return _finetune(study, study.plan.task_model, study.plan.task_subset)


def step_generate_imitation(study: Study) -> dict:
    a = _generate(study, study.plan.broad_model)
    b = _generate(study, study.plan.task_model)
    return {"new": a["new"] + b["new"], "cached": a["cached"] and b["cached"]}


def step_score(study: Study) -> dict:
    new, cached = 0, True
    for _kind, suite in study.plan.suites:
        cfg = {"suite": suite, "models": study.plan.models, "teacher": study.plan.teacher}
        r = study.child("score", f"score {suite}", cfg)
        new += 0 if r["cached"] else int(r["summary"].get("computed", 0) if isinstance(r["summary"], dict) else 0)
        cached &= r["cached"]
    return {"new": new, "cached": cached}


def same_report(a: str | None, b: str | None) -> bool:
    """Equal reports, ignoring the time each was generated at."""
    if a is None or b is None:
        return False
    strip = lambda t: re.sub(r"Generated \S+", "Generated", t)  # noqa: E731
    return strip(a) == strip(b)


def step_report(study: Study) -> dict:
    text = build_report(study.ws, study.plan)
    path = report_path(study.ws, study.plan)
    old = path.read_text(encoding="utf-8") if path.exists() else None
    unchanged = same_report(old, text)
    path.write_text(text, encoding="utf-8")
    return {"new": 0 if unchanged else 1, "cached": unchanged, "path": str(path)}


STEPS: list[Step] = [
    Step("import", "import the samples", step_import),
    Step("models", "prepare the packaged models", step_models),
    Step("coverage", "coverage of the imitation data on the QA suite", step_coverage),
    Step("subset", f"task-specific subset ({SYNTHETIC_TASK})", step_subset),
    Step("generate-base", "base model generations", step_generate_base),
    Step("generate-teacher", "teacher generations (served, via openai)", step_generate_teacher),
    Step("finetune-broad", "LoRA imitation run: broad", step_finetune_broad),
    Step("finetune-task", f"LoRA imitation run: {SYNTHETIC_TASK}", step_finetune_task),
    Step("generate-imitation", "imitation model generations", step_generate_imitation),
    Step("score", "scores", step_score),
    Step("report", "report", step_report),
]


# -- roles, report -------------------------------------------------------------------------------------------
def set_roles(ws: Workspace, plan: Plan) -> None:
    """Point the workspace's roles at the demo's models (the TUI's Compare and Analysis read them)."""
    path = ws.config_path
    text = path.read_text(encoding="utf-8")
    lines, out, in_roles = text.splitlines(), [], False
    wanted = {
        "teacher": json.dumps(plan.teacher),
        "base": json.dumps(plan.base),
        "imitation": json.dumps([plan.broad_model, plan.task_model]),
    }
    for ln in lines:
        stripped = ln.strip()
        if stripped.startswith("["):
            in_roles = stripped == "[roles]"
        key = stripped.split("=", 1)[0].strip() if "=" in stripped else None
        if in_roles and key in wanted:
            out.append(f"{key} = {wanted.pop(key)}")
            continue
        out.append(ln)
    if wanted:  # no [roles] table (or keys missing): add them
        out += ["", "[roles]"] + [f"{k} = {v}" for k, v in wanted.items()]
    new = "\n".join(out) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
        ws.__dict__.pop("config", None)  # cached_property: reread on next use


def report_path(ws: Workspace, plan: Plan) -> Path:
    return ws.artifact_dir("demo") / f"report{plan.suffix}.md"


def build_report(ws: Workspace, plan: Plan) -> str:
    """The study's report in markdown: each suite's scores per model, gap closed, coverage."""
    from core.analysis.report import markdown_section

    parts = [f"# mirage demo{' (quick)' if plan.quick else ''}: imitating {TEACHER_PACKAGED} with {BASE_PACKAGED}", ""]
    for _kind, suite in plan.suites:
        parts.append(markdown_section(ws, suite, models=plan.models, teacher=plan.teacher))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


# -- the job handler ------------------------------------------------------------------------------------------
def run_job(ctx) -> dict:
    """Job kind "study": config {quick, samples}. Runs STEPS in order; finished work is skipped."""
    plan = Plan.make(bool(ctx.config.get("quick")), ctx.config.get("samples"))
    study = Study(ctx, plan)
    set_roles(ctx.ws, plan)
    summary: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        for i, step in enumerate(STEPS):
            ctx.check_cancel()
            ctx.event(
                step=i,
                total_steps=len(STEPS),
                message=f"[{i + 1}/{len(STEPS)}] {step.title}",
                study_step=step.id,
                state="started",
            )
            t0 = time.monotonic()
            res = step.fn(study)
            secs = round(time.monotonic() - t0, 1)
            res = {**res, "seconds": secs}
            summary[step.id] = res
            how = "cached" if res.get("cached") else f"{res.get('new', 0)} new"
            ctx.event(
                step=i + 1,
                total_steps=len(STEPS),
                message=f"[{i + 1}/{len(STEPS)}] {step.title}: {how}, {secs:.0f} s",
                study_step=step.id,
                state="done",
                result=res,
            )
    finally:
        study.stop_teacher()
    total = round(time.monotonic() - t_start, 1)
    ctx.event(
        message=f"study done in {total:.0f} s; report: {report_path(ctx.ws, plan)}",
        study_summary=summary,
        seconds=total,
        report=str(report_path(ctx.ws, plan)),
    )
    return summary


# -- entry points for the command -------------------------------------------------------------------------------
def prepare_workspace(path: str | Path | None) -> Workspace:
    return Workspace.init(path or "demo-workspace")


def active_study(ws: Workspace, plan: Plan) -> dict | None:
    for j in reversed(jobs.list_jobs(ws, kind="study")):
        if j["status"] in jobs.ACTIVE and j["config"] == plan.to_config():
            return j
    return None


def start(ws: Workspace, plan: Plan, *, detach: bool = True, on_event=None) -> int:
    """Start (or attach to) the study job; returns its id."""
    running = active_study(ws, plan)
    if running:
        return running["id"]
    name = "demo study" + (" (quick)" if plan.quick else "")
    return jobs.submit(ws, "study", name, plan.to_config(), detach=detach, on_event=on_event)


def step_results(ws: Workspace, job_id: int) -> dict[str, dict]:
    """{step id: result} recorded by a study job (what each step did: new, cached, seconds)."""
    out = {}
    for ev in jobs.events(ws, job_id):
        d = ev["data"]
        if d.get("state") == "done" and d.get("study_step"):
            out[d["study_step"]] = d.get("result", {})
    return out
