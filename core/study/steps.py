"""The study's steps, in order: each is idempotent, so a rerun only does what is missing.

Import the samples, prepare the models, coverage, the task-specific subset, generations of base and
teacher (served behind an OpenAI-compatible endpoint), two LoRA imitation runs (broad and
task-specific), their generations, scores and the report. Each returns what it did (`new` rows or
steps, `cached`), which the handler records in a "step" event.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import NotFound
from core.store.workspace import Workspace
from core.study.plan import BASE_PACKAGED, SYNTHETIC_TASK, TEACHER_PACKAGED, Step, Study
from core.study.report import build_report, report_path, same_report


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
    from core.models import packaged

    new = 0
    for name in (TEACHER_PACKAGED, BASE_PACKAGED):
        if packaged.is_prepared(name):
            continue
        study.drive(packaged.prepare_packaged(name))
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
    from core.coverage.subsets import make_subset

    ws, plan = study.ws, study.plan
    if ws.db.execute("select 1 from datasets where name = ?", [plan.task_subset]).fetchone():
        return {"new": 0, "cached": True}
    # The NQ-synthetic collection is the task-specific data; coverage (the step before) shows how
    # closely it supports the task's eval items.
    res = make_subset(ws, plan.task_subset, plan.data, source=f"synthetic_{SYNTHETIC_TASK}.jsonl")
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
            from core.finetune.trainer import cpu_has_bf16
            from core.models import registry as models

            # bf16 where the CPU has it (faster matmuls, see DESIGN.md) for plain models. Not for
            # adapters: a LoRA merged into a bf16 Gemma generates about 6x slower than in fp32.
            adapter = models.model_kind(self.ws, self.name).on_base
            dtype = "bfloat16" if cpu_has_bf16() and not adapter else None
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
                from core.models import registry as models

                self.tokenizer = models.resolve(self.ws, self.name).tokenizer
            return self.tokenizer
        return self._load()[i]

    def __bool__(self):
        return True


def _generate(study: Study, model: str) -> dict:
    """Generate `model`'s outputs on every suite in this process, loading the model once (cached)."""
    from core.models import generation
    from core.models import registry as models

    local = models.model_kind(study.ws, model).loadable
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
    from core.finetune.config import make_config

    p = study.plan
    cfg = make_config(
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
