"""Finetune runs as jobs: validate, dry-run, submit (one job per budget), the job handler, the run list.

A run is a background job (kind "finetune", lane "train": one at a time, the rest queue). The
handler plans the run, drives `Trainer.train` from the last checkpoint (`mirage jobs resume ID`
continues with the same data order), records every step as a job event, then saves the adapter in
PEFT format and registers it as a model with its lineage. `python -m core.finetune WS JOB` (under
torchrun or `accelerate launch`) runs the same handler on every process; rank 0 records.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import BadInput, JobError
from core.finetune.config import human_tokens, make_config
from core.finetune.data import IGNORE
from core.finetune.trainer import Plan, Trainer, check_base, dtype_name, make_plan
from core.runtime import jobs, progress
from core.runtime.progress import Progress
from core.store.workspace import Workspace


def validate(ws: Workspace, cfg: dict) -> None:
    """Fail fast (before a job is queued) on an unknown base or data, or data with nothing in it."""
    from core.data.datasets import count_examples

    check_base(ws, cfg["base"])
    n, _ = count_examples(ws, cfg["data"])
    if n == 0:
        raise BadInput(cfg["data"], "the dataset has no examples", field="data")
    if cfg.get("eval_data"):
        if count_examples(ws, cfg["eval_data"])[0] == 0:
            raise BadInput(cfg["eval_data"], "the eval dataset has no examples", field="eval_data")
    if cfg.get("qlora"):
        import torch

        from core.finetune.trainer import _qlora_kwargs

        _qlora_kwargs("cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16)  # refuses before queuing


def dry_run(ws: Workspace, cfg: dict) -> dict:
    """What a run would do: examples, tokens, steps, and an estimate from one measured step."""
    import tempfile

    plan = make_plan(ws, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(plan, Path(tmp))
        trainer.setup()
        t0 = time.perf_counter()
        loss, tokens, _, _ = trainer.step(0)
        dt = time.perf_counter() - t0
    first = plan.step_batches(0)
    ex_idx = first[0][0] if first else 0
    return {
        **plan.summary(),
        "step_seconds": dt,
        "step_tokens": tokens,
        "first_loss": loss,
        "estimated_seconds": dt * plan.total_steps,
        "dtype": dtype_name(trainer.dtype),
        "device": str(trainer.acc.device),
        "sample": plan.tok.decode(plan.sel.ids[ex_idx]),
        "sample_trained": plan.tok.decode([t for t in plan.sel.labels[ex_idx] if t != IGNORE]),
    }


def _unique(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}-{k}", k + 1
    return name


def default_name(ws: Workspace, base: str, data: str, tokens: int | None) -> str:
    stem = f"{Path(base).name if Path(base).expanduser().is_dir() else base}-{data}-{human_tokens(tokens)}"
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem)
    taken = {r["name"] for r in ws.db.query("select name from models")}
    taken |= {
        r["name"]
        for r in ws.db.query(
            "select name from jobs where kind = 'finetune' and status in ('queued','running','done','interrupted')"
        )
    }
    return _unique(stem, taken)


def submit(
    ws: Workspace,
    base: str,
    data: str,
    *,
    tokens: list[int | None] | None = None,
    name: str | None = None,
    detach: bool = True,
    start: bool = True,
    on_event: Callable[[dict], None] | None = None,
    **overrides,
) -> list[int]:
    """Queue one finetune job per budget (a sweep when several); returns the job ids."""
    budgets = tokens or [None]
    cfgs = []
    for b in budgets:
        run_name = name if len(budgets) == 1 else (f"{name}-{human_tokens(b)}" if name else None)
        cfgs.append(make_config(base, data, tokens=b, name=run_name, **overrides))
    validate(ws, cfgs[0])
    ids = []
    for cfg in cfgs:
        if cfg["name"]:
            if (
                ws.db.execute("select 1 from models where name = ?", [cfg["name"]]).fetchone()
                or ws.db.execute(
                    "select 1 from jobs where kind='finetune' and name = ? and status != 'cancelled'"
                    " and status != 'failed'",
                    [cfg["name"]],
                ).fetchone()
            ):
                raise BadInput("--name", f"a model or run named '{cfg['name']}' exists; choose another", field="name")
        else:
            cfg["name"] = default_name(ws, base, data, cfg["tokens"])
        ids.append(jobs.create(ws, "finetune", cfg["name"], cfg))
    if start:
        for job_id in ids:
            if detach:
                jobs.spawn(ws, job_id)
            else:
                jobs.run(ws, job_id, on_event=on_event)
    return ids


def budget_notes(
    ws: Workspace,
    data: str,
    budgets: list[int | None],
    *,
    base: str | None = None,
    template: str | None = None,
    max_length: int | None = None,
) -> list[str]:
    """Budgets beyond the data.

    With `base`: by the count the run itself uses (core.finetune.tokens: the base's tokenizer over
    the rendered template, cached), so the note and the run's own figures agree. Without it, from
    the import's approximate counts, and said to be approximate.
    """
    from core.data.datasets import count_examples

    if all(b is None for b in budgets):
        return []
    if base is not None:
        from core.finetune.tokens import dataset_tokens, exact_counter

        got = dataset_tokens(ws, data, exact_counter(ws, base, template=template, max_length=max_length))
        n, tokens, how = got["examples"], got["tokens_exact"], f"{got['tokens_exact']:,} tokens by {got['tokenizer']}"
    else:
        n, tokens = count_examples(ws, data)
        how = f"~{tokens:,} tokens, approximate"
    return [
        f"budget {human_tokens(b)} is larger than '{data}' ({how}, in {n} examples): that run uses all of it"
        for b in budgets
        if b is not None and b > tokens
    ]


def register_adapter(ws: Workspace, cfg: dict, out: Path, plan: Plan, job_id: int) -> str:
    """Register the saved adapter as a model whose lineage names its base, data and run."""
    from core.data.datasets import get_dataset
    from core.models import registry as models

    base = cfg["base"]
    p = Path(base).expanduser()
    if p.is_dir():  # a folder given as --base: register it so the adapter's lineage names a model
        folder = str(p.resolve())
        known = [
            r["name"]
            for r in ws.db.query("select name, spec from models where kind = 'hf'")
            if json.loads(r["spec"] or "{}").get("path") == folder
        ]
        if known:
            base = known[0]
        else:
            taken = set(models.known_names(ws))
            stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in p.name).lstrip("._-") or "base"
            base = _unique(stem, taken)
            models.register(ws, base, "hf", {"path": folder})
    lineage = {
        "base": base,
        "data": cfg["data"],
        "budget": cfg["tokens"],
        "tokens": plan.sel.tokens,
        "examples": len(plan.sel.ids),
        "run": job_id,
        "fingerprint": plan.sel.fingerprint,
        "template": plan.template,
        "data_kind": get_dataset(ws, cfg["data"])["kind"],
    }
    models.register(ws, cfg["name"], "adapter", {"path": str(out), "base": base, "lineage": lineage}, replace=True)
    return cfg["name"]


def _write_record(path: Path, record: dict) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(record, sort_keys=True, indent=1))
    os.replace(tmp, path)


def base_hub_id(ws: Workspace, base: str) -> str | None:
    """The hub id of a run's base (a registered name or a HF folder), for a portable adapter."""
    from core.models import registry as models

    p = Path(base).expanduser()
    if p.is_dir():
        return models.folder_hub_id(p)
    return models.hub_id(ws, base)


def model_card(cfg: dict, plan: Plan, *, base_id: str | None, result: dict, dtype: str, world: int) -> str:
    """The adapter's README.md: what it was trained from and how, enough to reproduce or judge it."""
    import core

    s = plan.sel
    hyper = {
        k: cfg.get(k)
        for k in (
            "rank",
            "alpha",
            "dropout",
            "target_modules",
            "lr",
            "scheduler",
            "warmup_ratio",
            "epochs",
            "max_steps",
            "batch_size",
            "grad_accum",
            "max_length",
            "max_grad_norm",
            "weight_decay",
            "seed",
        )
    }
    lines = [
        "---",
        f"base_model: {base_id or plan.folder.name}",
        "library_name: peft",
        "tags: [lora, mirage, imitation]",
        "---",
        f"# {cfg['name']}",
        "",
        f"A LoRA adapter trained by mirage {core.__version__} on the imitation data '{cfg['data']}'.",
        "",
        f"- base: `{base_id or 'unknown hub id'}` (mirage model '{cfg['base']}')",
        f"- data: '{cfg['data']}', fingerprint `{s.fingerprint}`",
        f"- token budget: {human_tokens(cfg['tokens'])}; trained on {s.tokens:,} tokens"
        f" ({s.label_tokens:,} assistant tokens) in {len(s.ids)} examples",
        f"- template: {plan.template}",
        f"- steps: {plan.total_steps} of a global batch of {cfg['batch_size'] * cfg['grad_accum']} examples,"
        f" on {world} process(es), {dtype}",
        f"- final loss: {result.get('loss')}",
        f"- eval_loss: {result.get('eval_loss')} ({s.eval_source or s.eval_note or 'no held-out data'})",
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps(hyper, indent=2, sort_keys=True),
        "```",
        "",
        "## Use",
        "",
        "PEFT: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), THIS_FOLDER)`.",
        f"vLLM: `vllm serve {base_id or 'BASE'} --enable-lora --lora-modules {cfg['name']}=THIS_FOLDER`.",
        "",
    ]
    return "\n".join(lines)


def step_recorder(ctx, plan: Plan) -> Callable[[Progress], None]:
    """Record each of the trainer's Progress steps as a job event (step, loss, lr, ... and batch ids)."""

    def record(p: Progress) -> None:
        if p.metrics is None:
            ctx.event(step=p.done, total_steps=p.total, message=p.detail)
        else:
            ctx.event(step=p.done, total_steps=p.total, **p.metrics, batch_ids=plan.batch_example_ids(p.done - 1))

    return record


def run_job(ctx) -> None:
    """The job handler (kind "finetune"): plan, train from the last checkpoint, save, register."""
    cfg = ctx.config
    run_dir = ctx.dir
    plan = make_plan(ctx.ws, cfg)
    summary = plan.summary()
    record = run_dir / "run.json"
    if record.exists():
        old = json.loads(record.read_text())
        if old.get("fingerprint") != summary["fingerprint"]:
            raise JobError(f"the data of run '{cfg['name']}' changed since it started; start a new run")
    else:
        _write_record(record, {**summary, "config": cfg})
        ctx.event(
            step=0,
            total_steps=plan.total_steps,
            message=f"{summary['examples']} examples, {summary['tokens']:,} tokens,"
            f" {plan.total_steps} steps, template {plan.template}",
            examples=summary["examples"],
            tokens=summary["tokens"],
            fingerprint=summary["fingerprint"],
        )
        for note in plan.notes():
            ctx.event(message=note)
        if plan.sel.exhausted:  # only a budget the selection ran out of can be larger than the data
            # Here, not in `finetune --detach`'s foreground: the count loads the base's tokenizer
            # (converting a packaged base first takes 25-60 s), and --detach returns at once.
            for note in budget_notes(
                ctx.ws,
                cfg["data"],
                [cfg["tokens"]],
                base=cfg["base"],
                template=cfg.get("template"),
                max_length=cfg.get("max_length"),
            ):
                ctx.event(message=note, note="budget")
    trainer = Trainer(plan, run_dir)
    main_process = trainer.acc.is_main_process
    if main_process:
        world = trainer.world
        ctx.event(
            message=f"training on {trainer.acc.device}"
            + (f" x {world} processes ({trainer.acc.distributed_type.value.lower()})" if world > 1 else ""),
            world_size=world,
        )
    # The trainer checks the cancel event itself, so a cancelled run saves the step it reached.
    result = progress.run(trainer.train(ctx.cancel), step_recorder(ctx, plan) if main_process else None)
    if result["status"] != "done" or not main_process:
        return  # cancelled: the runner records it; the last checkpoint stays for a resume
    if result.get("eval_loss") is not None:
        ctx.event(message=f"eval_loss {result['eval_loss']:.4f} on {len(plan.sel.eval_ids)} held-out examples")
    out = ctx.ws.artifact_dir("adapters") / cfg["name"]
    base_id = base_hub_id(ctx.ws, cfg["base"])
    dtype = dtype_name(trainer.dtype)
    card = model_card(cfg, plan, base_id=base_id, result=result, dtype=dtype, world=trainer.world)
    trainer.save_adapter(out, base_id=base_id, card=card)
    model_name = register_adapter(ctx.ws, cfg, out, plan, ctx.id)
    rec = json.loads(record.read_text())
    rec.update(
        adapter=model_name,
        adapter_path=str(out),
        final_loss=result.get("loss"),
        eval_loss=result.get("eval_loss"),
        base_hub_id=base_id,
        world_size=trainer.world,
        dtype=dtype,
        # The kernel "auto" resolved to (eager on a CPU for short sequences, core/finetune/cpu.py).
        attn_implementation=getattr(trainer.peft_model.get_base_model().config, "_attn_implementation", None),
    )
    _write_record(record, rec)
    ctx.event(message=f"adapter saved as model '{model_name}'", adapter=model_name)
    for old in run_dir.glob("ckpt-*"):  # the adapter is the result; optimizer state is no longer needed
        shutil.rmtree(old, ignore_errors=True)


def run_record(ws: Workspace, job_id: int) -> dict:
    p = ws.artifacts / "jobs" / str(job_id) / "run.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def list_runs(ws: Workspace) -> list[dict]:
    """Finetune runs for `mirage ls runs`: name, status, base, data, tokens, progress, loss, adapter."""
    out = []
    for j in jobs.list_jobs(ws, kind="finetune"):
        cfg = j["config"]
        rec = run_record(ws, j["id"])
        out.append(
            {
                "id": j["id"],
                "name": j["name"],
                "status": j["status"],
                "base": cfg.get("base"),
                "data": cfg.get("data"),
                "budget": cfg.get("tokens"),
                "tokens": rec.get("tokens"),
                "examples": rec.get("examples"),
                "step": j["step"],
                "total_steps": j["total_steps"],
                "loss": j["loss"],
                "adapter": rec.get("adapter"),
                "error": j.get("error"),
            }
        )
    return out


def _parent(pid: int | None) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _follow_rank0(ws: Workspace, job_id: int) -> dict | None:
    """Wait until rank 0 (a sibling under the same launcher) runs the job; None once it ended it.

    Rank 0 may wait in the train lane behind another run for longer than a collective (DDP's first
    broadcast) waits before timing out, so the other ranks start only once it trains.
    """
    from core.store.workspace import now

    since = now()
    while True:
        job = jobs.get_job(ws, job_id)
        ours = _parent(job["pid"]) == os.getppid()  # rank 0 has taken the job (not an earlier attempt)
        if ours and job["status"] == "running":
            return job
        # An end recorded after this attempt began (an earlier attempt's end is older).
        if ours and job["status"] not in jobs.ACTIVE and (job.get("finished_at") or "") >= since:
            return None
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """`accelerate launch -m core.finetune WORKSPACE JOB_ID`: every process trains; rank 0 records.

    Create the job first without starting it: `mirage finetune ... --no-start` prints its id.
    """
    import torch
    from accelerate import PartialState

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: accelerate launch -m core.finetune WORKSPACE JOB_ID", file=sys.stderr)
        return 2
    ws = Workspace.open(argv[0])
    # cpu=True is what makes accelerate join torchrun's process group with gloo on a machine
    # without CUDA; without it every process thought it was alone (and the main one).
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        job = jobs.run(ws, int(argv[1]))
        return 0 if job["status"] in ("done", "cancelled") else 1
    job = _follow_rank0(ws, int(argv[1]))
    if job is None:
        return 0  # rank 0 ended the job before training (cancelled in the queue)
    plan = make_plan(ws, job["config"])
    progress.run(Trainer(plan, ws.artifact_dir("jobs", str(job["id"]))).train())
    return 0
