"""The finetune loop: a run's Plan (base, tokenizer, selected data, steps), the model and the Trainer.

The loop is our own (on accelerate, so `accelerate launch -m core.finetune WS JOB` runs it on several
GPUs): transformers' Trainer / TRL's SFTTrainer compute full-vocabulary logits for every position,
autocast a float32 model on CPU, and checkpoint non-atomically; benchmarks/bench_finetune.py
measures the difference against SFTTrainer. `Trainer.train` is a progress generator: each optimizer
step yields a `Progress` whose metrics carry loss, lr, tokens_per_s and eta_s.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import BadInput, JobError, MirageError, ModelError, NotFound
from core.finetune.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, write_atomic_dir
from core.finetune.config import human_tokens
from core.finetune.data import Selection, collate, epoch_batches, load_tokenizer, select
from core.finetune.loss import trainable_module
from core.models.loading import has_chat_template
from core.runtime.progress import Progress, Work
from core.store.workspace import Workspace


# -- the base model -------------------------------------------------------------------------------------
def check_base(ws: Workspace, base: str) -> Path | None:
    """Fail on a base that cannot be trained; returns the folder when `base` is a path, else None."""
    p = Path(base).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BadInput(str(p), "no config.json: not a Hugging Face model folder", field="base")
        return p.resolve()
    from core.models import registry as models

    try:
        entry = models.get_model(ws, base)
    except NotFound as e:
        raise NotFound(f"unknown base model '{base}': {e.message}") from None
    if not models.model_kind(ws, base).own_weights:
        raise BadInput("--base", f"'{base}' is a {entry['kind']} model; a base needs local weights", field="base")
    return None


def resolve_base(ws: Workspace, base: str) -> tuple[Path, bool]:
    """(HF folder, is_chat_model) for a registered model name or a path to a HF folder."""
    folder = check_base(ws, base)
    if folder is not None:
        return folder, has_chat_template(folder)
    from core.models import registry as models

    return Path(models.local_folder(ws, base, quiet=True)), models.prompt_style(ws, base) == "chat"


# -- devices ----------------------------------------------------------------------------------------------
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str, device: str):
    import torch

    if name == "fp32":
        return torch.float32
    if name == "fp16":
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


@dataclass
class Plan:
    cfg: dict
    folder: Path
    tok: Any
    template: str
    sel: Selection
    steps_per_epoch: int
    total_steps: int
    world: int = 1

    def batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(
            [len(x) for x in self.sel.ids],
            self.cfg["batch_size"],
            self.cfg["seed"],
            epoch,
            group_by_length=self.cfg.get("group_by_length", True),
        )

    def micro_batches(self, step: int, rank: int = 0) -> list[list[int]]:
        """The micro-batches (lists of selection indices) this rank trains on at global `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        bs = self.batches(epoch)
        per_step = self.cfg["grad_accum"] * self.world
        out = []
        for a in range(self.cfg["grad_accum"]):
            j = k * per_step + a * self.world + rank
            if j < len(bs):
                out.append(bs[j])
            elif self.world > 1:  # every rank must take part in each step's all-reduce
                out.append(bs[j % len(bs)])
        return out

    def batch_example_ids(self, step: int, rank: int = 0) -> list[int]:
        """The example ids `rank` trains on at global `step` (0-based), in micro-batch order."""
        return [self.sel.example_ids[i] for mb in self.micro_batches(step, rank) for i in mb]

    def notes(self) -> list[str]:
        s = self.sel
        out = []
        if s.exhausted:
            out.append(
                f"budget {human_tokens(self.cfg['tokens'])} tokens is larger than the data"
                f" ({s.tokens:,} tokens in {len(s.ids)} examples): using all of it"
            )
        if s.skipped:
            out.append(f"{s.skipped} examples skipped: no assistant token within max length {self.cfg['max_length']}")
        return out

    def summary(self) -> dict:
        s = self.sel
        return {
            "base_folder": str(self.folder),
            "template": self.template,
            "examples": len(s.ids),
            "available_examples": s.available,
            "tokens": s.tokens,
            "label_tokens": s.label_tokens,
            "budget": self.cfg["tokens"],
            "budget_exceeds_data": s.exhausted,
            "fingerprint": s.fingerprint,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "notes": self.notes(),
        }


def make_plan(ws: Workspace, cfg: dict, *, world: int | None = None) -> Plan:
    from core.data.datasets import get_dataset

    if world is None:  # set by `accelerate launch` / torchrun for every process
        world = int(os.environ.get("WORLD_SIZE", "1"))

    folder, is_chat = resolve_base(ws, cfg["base"])
    get_dataset(ws, cfg["data"])  # NotFound names the data before any tokenizer work
    tok, template = load_tokenizer(folder, cfg["template"], is_chat)
    sel = select(ws, cfg["data"], cfg["tokens"], cfg["seed"], tok, cfg["max_length"])
    n_batches = math.ceil(len(sel.ids) / cfg["batch_size"])
    steps_per_epoch = max(1, math.ceil(n_batches / (cfg["grad_accum"] * world)))
    total = steps_per_epoch * cfg["epochs"]
    if cfg["max_steps"]:  # as in transformers: max_steps overrides epochs (continuing into more epochs)
        total = cfg["max_steps"]
    return Plan(cfg, folder, tok, template, sel, steps_per_epoch, total, world)


# -- model ----------------------------------------------------------------------------------------------------
def build_model(plan: Plan, device: str):
    """The base in the run's dtype with fresh LoRA weights (kept in fp32 by peft)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load would flood job logs and CLI output
    cfg = plan.cfg
    dtype = pick_dtype(cfg["dtype"], device)
    torch.manual_seed(cfg["seed"])
    try:
        model = AutoModelForCausalLM.from_pretrained(str(plan.folder), dtype=dtype)
    except OSError as e:
        raise ModelError(f"{plan.folder}: could not load the model ({str(e).splitlines()[0]})") from None
    model.config.use_cache = False
    if cfg.get("gradient_checkpointing"):
        # transformers' own per-layer checkpointing; non-reentrant needs no grad on the inputs.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = cfg["target_modules"]
    targets = "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg["rank"],
        lora_alpha=cfg["alpha"],
        lora_dropout=cfg["dropout"],
        target_modules=targets,
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as e:
        raise BadInput("--target-modules", str(e).splitlines()[0], field="target_modules") from None
    return peft_model.to(device), dtype


def dtype_name(dtype) -> str:
    """torch.bfloat16 -> "bf16" (the names the config and the run record use)."""
    return (
        str(dtype)
        .replace("torch.", "")
        .replace("bfloat16", "bf16")
        .replace("float32", "fp32")
        .replace("float16", "fp16")
    )


# -- training --------------------------------------------------------------------------------------------------
def _oom(cfg: dict) -> JobError:
    return JobError(
        f"out of memory at batch size {cfg['batch_size']} x max length {cfg['max_length']}:"
        " lower --batch-size (raise --grad-accum to keep the effective batch) or --max-length"
    )


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


class Trainer:
    """One run's loop over a Plan, checkpointing into `run_dir`; `train()` drives it as a Work generator."""

    def __init__(self, plan: Plan, run_dir: Path, *, accelerator=None):
        self.plan, self.run_dir = plan, run_dir
        if accelerator is None:
            import torch
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.acc = accelerator
        if plan.world != self.acc.num_processes:
            raise JobError(f"planned for {plan.world} processes, running in {self.acc.num_processes}")

    def setup(self):
        import torch
        from transformers import get_scheduler

        cfg = self.plan.cfg
        self.peft_model, self.dtype = build_model(self.plan, str(self.acc.device))
        self.module = trainable_module(self.peft_model, cfg["logit_chunk"], cfg.get("loss_impl", "chunked"))
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
        warmup = math.ceil(cfg["warmup_ratio"] * self.plan.total_steps)
        self.scheduler = get_scheduler(
            cfg["scheduler"], self.optimizer, num_warmup_steps=warmup, num_training_steps=self.plan.total_steps
        )
        self.module, self.optimizer = self.acc.prepare(self.module, self.optimizer)

    def step(self, step: int) -> tuple[float, int]:
        """One optimizer step at global `step` (0-based): (mean loss, tokens seen)."""
        import torch

        plan = self.plan
        micro = plan.micro_batches(step, self.acc.process_index)
        self.module.train()
        loss_total, tokens = 0.0, 0
        for mb in micro:
            ids, att, labels = collate(plan, mb, self.acc.device)
            loss_sum, n = self.module(ids, att, labels)
            n = max(int(n), 1)
            # Mean over this micro-batch's label tokens, averaged over the accumulation steps.
            self.acc.backward(loss_sum / n / len(micro))
            loss_total += float(loss_sum.detach()) / n / len(micro)
            tokens += int(att.sum())
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.acc.num_processes > 1:
            t = torch.tensor([loss_total, tokens], device=self.acc.device, dtype=torch.float64)
            t = self.acc.reduce(t, reduction="sum")
            loss_total, tokens = float(t[0]) / self.acc.num_processes, int(t[1])
        return loss_total, tokens

    def train(self, cancel: threading.Event | None = None) -> Work[dict]:
        """Train from the last checkpoint to the end, yielding a Progress per optimizer step.

        A step's metrics are loss, lr, tokens_per_s, eta_s and epoch; a resume or a checkpoint yields
        a Progress with a detail only. Returns {"status": "done", "step", "loss"}, or, once `cancel`
        is set, {"status": "cancelled", "step"} after saving the step reached so a resume continues
        there.
        """
        plan, cfg = self.plan, self.plan.cfg
        try:
            self.setup()
            start_step = self._restore()
            if start_step:
                yield Progress(start_step, plan.total_steps, f"resumed from checkpoint at step {start_step}")
            ema = last_loss = None
            for step in range(start_step, plan.total_steps):
                if cancel is not None and cancel.is_set():
                    if step > start_step and step % cfg["save_every"]:
                        yield from self.checkpoint(step)
                    return {"status": "cancelled", "step": step}
                t0 = time.perf_counter()
                loss, tokens = self.step(step)
                dt = time.perf_counter() - t0
                ema = dt if ema is None else 0.8 * ema + 0.2 * dt
                last_loss, done = loss, step + 1
                metrics = {
                    "loss": loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens / dt,
                    "eta_s": ema * (plan.total_steps - done),
                    "epoch": step // plan.steps_per_epoch,
                }
                yield Progress(done, plan.total_steps, metrics=metrics)
                if done % cfg["save_every"] == 0 and done < plan.total_steps:
                    yield from self.checkpoint(done)
                if cfg.get("throttle_s"):  # tests: widen the window for a kill at a known step
                    time.sleep(float(cfg["throttle_s"]))
            return {"status": "done", "step": plan.total_steps, "loss": last_loss}
        except MirageError:
            raise
        except Exception as e:
            if _is_oom(e):
                raise _oom(cfg) from None
            raise

    def _restore(self) -> int:
        """Load the last checkpoint, if any, into the set-up model; returns the step to continue from."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return 0
        state = load_checkpoint(ckpt, self.peft_model, self.optimizer, self.scheduler)
        fingerprint = self.plan.sel.fingerprint
        if state.get("fingerprint") != fingerprint:
            raise JobError(
                f"the data changed since this run started (fingerprint {fingerprint[:12]}"
                f" != {str(state.get('fingerprint'))[:12]}); start a new run"
            )
        return int(state["step"])

    def checkpoint(self, step: int) -> Work[None]:
        """Save the state at `step` (rank 0 writes, every rank waits), then report it."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_checkpoint(
                self.run_dir,
                step,
                self.acc.unwrap_model(self.module).peft,
                self.optimizer,
                self.scheduler,
                {
                    "fingerprint": self.plan.sel.fingerprint,
                    "position": {
                        "epoch": step // self.plan.steps_per_epoch,
                        "step_in_epoch": step % self.plan.steps_per_epoch,
                    },
                },
            )
            yield Progress(step, self.plan.total_steps, f"checkpoint at step {step}")
        self.acc.wait_for_everyone()

    def save_adapter(self, out: Path) -> Path:
        import json

        peft_model = self.acc.unwrap_model(self.module).peft

        def write(tmp: Path) -> None:
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
            self.plan.tok.save_pretrained(str(tmp))
            cfg = json.loads((tmp / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = str(self.plan.folder)
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))

        write_atomic_dir(out, write)
        return out
