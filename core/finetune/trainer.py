"""The finetune loop: a run's Plan (base, tokenizer, selected data, steps), the model and the Trainer.

The loop is our own (on accelerate, so `accelerate launch -m core.finetune WS JOB` runs it on several
GPUs): transformers' Trainer / TRL's SFTTrainer compute full-vocabulary logits for every position,
autocast a float32 model on CPU, and checkpoint non-atomically; benchmarks/bench_finetune.py
measures the difference against SFTTrainer. `Trainer.train` is a progress generator: each optimizer
step yields a `Progress` whose metrics carry loss, lr, tokens_per_s and eta_s.
"""

from __future__ import annotations

import math
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
from core.models.loading import has_chat_template, peft_quietly
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
    """What a run trains on, step by step; independent of how many processes run it.

    A step's global batch is `grad_accum` micro-batches of `batch_size` examples whatever the world
    size: N processes split each step's examples between them (`micro_batches`), so 1 and N
    processes see the same data in the same order and take the same optimizer steps.
    """

    cfg: dict
    folder: Path
    tok: Any
    template: str
    sel: Selection
    steps_per_epoch: int
    total_steps: int

    def batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(
            [len(x) for x in self.sel.ids],
            self.cfg["batch_size"],
            self.cfg["seed"],
            epoch,
            group_by_length=self.cfg.get("group_by_length", True),
        )

    def step_batches(self, step: int) -> list[list[int]]:
        """The global micro-batches (selection indices) of global `step` (0-based), as one process runs them."""
        epoch, k = divmod(step, self.steps_per_epoch)
        ga = self.cfg["grad_accum"]
        return self.batches(epoch)[k * ga : (k + 1) * ga]

    def micro_batches(self, step: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        """This rank's share of `step`: the same number of micro-batches on every rank (each backward
        is an all-reduce), an empty one where the step has nothing left for it.

        When the accumulation steps divide among the ranks, each rank takes whole micro-batches
        (a, a+world, ...); otherwise every micro-batch is split example by example.
        """
        ga = self.cfg["grad_accum"]
        glob = self.step_batches(step)
        if world == 1:
            return glob
        if ga % world == 0:
            return [glob[a] if a < len(glob) else [] for a in range(rank, ga, world)]
        return [glob[a][rank::world] if a < len(glob) else [] for a in range(ga)]

    def step_targets(self, step: int) -> int:
        """Label tokens in the whole global batch of `step`: the loss is their mean on every rank."""
        return sum(self.sel.targets[i] for mb in self.step_batches(step) for i in mb)

    def batch_example_ids(self, step: int) -> list[int]:
        """The example ids of global `step` (0-based), in micro-batch order (the same for any world size)."""
        return [self.sel.example_ids[i] for mb in self.step_batches(step) for i in mb]

    def eval_every(self) -> int:
        """Steps between evaluations: `eval_every`, else up to 5 a run, as many as keep evaluation
        (a forward per held-out example) within ~20% of training (~3 forwards' worth per example)."""
        every = self.cfg.get("eval_every")
        if every:
            return int(every)
        trained = self.total_steps * self.cfg["batch_size"] * self.cfg["grad_accum"]
        n_evals = min(5, max(1, int(0.2 * 3 * trained / max(len(self.sel.eval_ids), 1))))
        return max(1, math.ceil(self.total_steps / n_evals))

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
        if s.eval_ids:
            out.append(f"eval_loss on {len(s.eval_ids)} examples ({s.eval_source}) every {self.eval_every()} steps")
        if s.eval_note:
            out.append(s.eval_note)
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
            "eval_examples": len(s.eval_ids),
            "eval_source": s.eval_source,
            "eval_fingerprint": s.eval_fingerprint if s.eval_ids else None,
            "global_batch": self.cfg["batch_size"] * self.cfg["grad_accum"],
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "notes": self.notes(),
        }


def make_plan(ws: Workspace, cfg: dict) -> Plan:
    from core.data.datasets import get_dataset

    folder, is_chat = resolve_base(ws, cfg["base"])
    get_dataset(ws, cfg["data"])  # NotFound names the data before any tokenizer work
    if cfg.get("eval_data"):
        get_dataset(ws, cfg["eval_data"])
    tok, template = load_tokenizer(folder, cfg["template"], is_chat)
    sel = select(
        ws,
        cfg["data"],
        cfg["tokens"],
        cfg["seed"],
        tok,
        cfg["max_length"],
        eval_fraction=cfg.get("eval_fraction", 0.0),
        eval_data=cfg.get("eval_data"),
        eval_cap=cfg.get("eval_max_examples", 200),
    )
    n_batches = math.ceil(len(sel.ids) / cfg["batch_size"])
    steps_per_epoch = max(1, math.ceil(n_batches / cfg["grad_accum"]))
    total = steps_per_epoch * cfg["epochs"]
    if cfg["max_steps"]:  # as in transformers: max_steps overrides epochs (continuing into more epochs)
        total = cfg["max_steps"]
    return Plan(cfg, folder, tok, template, sel, steps_per_epoch, total)


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
    kwargs: dict[str, Any] = {"dtype": dtype}
    attn = cfg.get("attn_implementation", "auto")
    if attn != "auto":
        kwargs["attn_implementation"] = attn
    if cfg.get("qlora"):
        kwargs.update(_qlora_kwargs(device, dtype))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(plan.folder), **kwargs)
    except OSError as e:
        raise ModelError(f"{plan.folder}: could not load the model ({str(e).splitlines()[0]})") from None
    except (ImportError, ValueError) as e:
        if "attn_implementation" in kwargs and ("attn" in str(e).lower() or "flash" in str(e).lower()):
            raise BadInput("--attn-implementation", str(e).splitlines()[0], field="attn_implementation") from None
        raise
    model.config.use_cache = False
    if attn == "auto" and not cfg.get("qlora"):
        from core.finetune.cpu import attention_for

        # Decided on the loaded model's own config; switching kernels on a loaded model is transformers' own API.
        chosen = attention_for(
            model.config,
            device=device,
            batch_size=cfg["batch_size"],
            max_length=cfg["max_length"],
            checkpointing=bool(cfg.get("gradient_checkpointing")),
        )
        if chosen:
            model.set_attn_implementation(chosen)
    if cfg.get("qlora"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.get("gradient_checkpointing"))
        )
    if cfg.get("gradient_checkpointing"):
        # transformers' own per-layer checkpointing; non-reentrant needs no grad on the inputs.
        # (5.x renamed it activation checkpointing; the old name warns.)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
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
        with peft_quietly():
            peft_model = get_peft_model(model, lora)
    except ValueError as e:
        raise BadInput("--target-modules", str(e).splitlines()[0], field="target_modules") from None
    if cfg.get("qlora"):  # bitsandbytes placed the quantised weights on the GPU already
        return peft_model, dtype
    if str(device).startswith("cpu"):
        from core.finetune.cpu import cheapen_lora_dropout, fused_rms_norms, lean_lora_forwards

        if cfg.get("cheap_dropout", True):
            cheapen_lora_dropout(peft_model)
        if cfg.get("lean_lora", True):
            lean_lora_forwards(peft_model)
        if cfg.get("fused_norm", True):
            fused_rms_norms(peft_model)
    return peft_model.to(device), dtype


def _qlora_kwargs(device: str, dtype) -> dict:
    """4-bit NF4 base weights (QLoRA): only with bitsandbytes on a CUDA GPU, else a clear refusal."""
    import importlib.util

    if not device.startswith("cuda"):
        raise BadInput("--qlora", "QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels); none is visible", field="qlora")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BadInput("--qlora", "QLoRA needs bitsandbytes: pip install bitsandbytes", field="qlora")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    return {"quantization_config": quant, "device_map": {"": device}}


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


def make_accelerator(plan: Plan, run_dir: Path):
    """The Accelerator of a run: gloo on CPU, NCCL on GPUs (from the launcher's env), trackers if asked."""
    import torch
    from accelerate import Accelerator

    kwargs: dict[str, Any] = {}
    report_to = plan.cfg.get("report_to") or "none"
    if report_to != "none":
        kwargs.update(log_with=report_to, project_dir=str(run_dir / "trackers"))
    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def _diverged(step: int, loss: float, grad_norm: float) -> JobError:
    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
    return JobError(
        f"training diverged at step {step}: {what}; nothing of this step was applied and the last"
        " checkpoint is intact (lower --lr, use --dtype fp32, or check the data)"
    )


class Trainer:
    """One run's loop over a Plan, checkpointing into `run_dir`; `train()` drives it as a Work generator.

    Under torchrun / `accelerate launch` every process runs the same loop on its share of each step
    (`Plan.micro_batches`); gradients are all-reduced by DDP (or FSDP / DeepSpeed through accelerate),
    so the optimizer steps match one process's.
    """

    def __init__(self, plan: Plan, run_dir: Path, *, accelerator=None):
        self.plan, self.run_dir = plan, run_dir
        self.acc = accelerator if accelerator is not None else make_accelerator(plan, run_dir)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes

    def _sharded_weights(self) -> bool:
        """FSDP or ZeRO-3 shard the output layer: the chunked loss cannot read its weight directly."""
        from accelerate.utils import DistributedType

        kind = self.acc.distributed_type
        if kind == DistributedType.FSDP:
            return True
        if kind == DistributedType.DEEPSPEED:
            plugin = self.acc.state.deepspeed_plugin
            return bool(plugin) and int(plugin.zero_stage or 0) == 3
        return False

    def setup(self):
        import torch
        from transformers import get_scheduler

        cfg = self.plan.cfg
        self.peft_model, self.dtype = build_model(self.plan, str(self.acc.device))
        self.loss_impl = cfg.get("loss_impl", "chunked")
        if self._sharded_weights():
            # The model's own loss runs the output layer's forward, which gathers its shards.
            self.loss_impl = "full"
        self.module = trainable_module(self.peft_model, cfg["logit_chunk"], self.loss_impl)
        self.params = [p for p in self.peft_model.parameters() if p.requires_grad]
        # One fused kernel for all adapter tensors instead of ~10 small ops per tensor (the same update).
        fused = all(p.device.type in ("cpu", "cuda") for p in self.params)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0), fused=fused
        )
        warmup = math.ceil(cfg["warmup_ratio"] * self.plan.total_steps)
        self.scheduler = get_scheduler(
            cfg["scheduler"], self.optimizer, num_warmup_steps=warmup, num_training_steps=self.plan.total_steps
        )
        from accelerate.utils import DistributedType

        per_rank = len(self.plan.micro_batches(0, self.rank, self.world))
        if self.acc.distributed_type == DistributedType.DEEPSPEED and per_rank > 1:
            # DeepSpeed steps its optimizer inside every backward unless its own accumulation
            # count matches ours; one micro-batch per rank per step keeps the two in step.
            raise JobError(
                f"under DeepSpeed each process runs one micro-batch a step: give --grad-accum {self.world}"
                f" (or 1) with {self.world} processes, and raise --batch-size for a larger global batch"
            )
        self.module, self.optimizer = self.acc.prepare(self.module, self.optimizer)
        self.params = [p for p in self.acc.unwrap_model(self.module).parameters() if p.requires_grad]
        if (cfg.get("report_to") or "none") != "none":
            config = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))}
            self.acc.init_trackers(cfg.get("name") or "mirage", config=config)

    def _sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (the values themselves in one process)."""
        if self.world == 1:
            return values
        import torch

        t = torch.tensor(values, device=self.acc.device, dtype=torch.float64)
        return [float(x) for x in self.acc.reduce(t, reduction="sum")]

    def step(self, step: int, cancel: threading.Event | None = None) -> tuple[float, int, float, bool]:
        """One optimizer step at global `step` (0-based): (loss, tokens seen, grad norm, stop agreed).

        The loss is the mean over every label token of the global batch (all micro-batches, all
        ranks), the same number one process computes; the token count comes from the plan, so no
        rank waits on another to scale its share. A non-finite loss or gradient applies nothing.
        """
        import contextlib

        plan, cfg = self.plan, self.plan.cfg
        micro = plan.micro_batches(step, self.rank, self.world)
        n_global = max(plan.step_targets(step), 1)
        self.module.train()
        loss_sum, tokens = 0.0, 0
        for i, mb in enumerate(micro):
            weight = 1.0 if mb else 0.0
            # A rank with nothing left in this micro-batch still runs one (weight 0): every
            # rank's backward joins the same all-reduce.
            ids, att, labels = collate(plan, mb or plan.step_batches(step)[0][:1], self.acc.device)
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.acc.no_sync(self.module)
            with sync:
                part, _ = self.module(ids, att, labels)
                # DDP averages gradients over the ranks: x world undoes it, / n_global makes the
                # sum over every rank's tokens a mean over the global batch.
                self.acc.backward(part * (weight * self.world / n_global))
            loss_sum += weight * float(part.detach())
            tokens += int(att.sum()) if mb else 0
        max_norm = float(cfg.get("max_grad_norm", 1.0) or 0.0)
        norm = self.acc.clip_grad_norm_(self.params, max_norm if max_norm > 0 else float("inf"))
        grad_norm = float(norm) if norm is not None else 0.0
        stop = 1.0 if cancel is not None and cancel.is_set() else 0.0
        loss_sum, tokens_f, stop = self._sum([loss_sum, float(tokens), stop])
        loss = loss_sum / n_global
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise _diverged(step + 1, loss, grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, int(tokens_f), grad_norm, stop > 0

    def evaluate(self) -> float | None:
        """The mean loss per label token over the held-out examples (dropout off), None without any."""
        import torch

        plan = self.plan
        n = len(plan.sel.eval_ids)
        if not n:
            return None
        bs = plan.cfg["batch_size"]
        order = sorted(range(n), key=lambda i: len(plan.sel.eval_ids[i]))  # little padding
        mine = order[self.rank :: self.world]
        n_batches = math.ceil(math.ceil(n / self.world) / bs)  # the same on every rank
        self.module.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for b in range(n_batches):
                idx = mine[b * bs : (b + 1) * bs]
                ids, att, labels = collate(plan, idx or order[:1], self.acc.device, held_out=True)
                part, k = self.module(ids, att, labels)
                if idx:
                    total, count = total + float(part), count + int(k)
        self.module.train()
        total, count = self._sum([total, float(count)])
        return total / max(count, 1)

    def train(self, cancel: threading.Event | None = None) -> Work[dict]:
        """Train from the last checkpoint to the end, yielding a Progress per optimizer step.

        A step's metrics are loss, lr, grad_norm, tokens_per_s, eta_s and epoch, plus eval_loss every
        `eval_every` steps and at the end; a resume or a checkpoint yields a Progress with a detail
        only. Returns {"status": "done", "step", "loss", "eval_loss"}, or, once `cancel` is set (on
        rank 0: every rank agrees at the end of the step), {"status": "cancelled", "step"} after
        saving the step reached so a resume continues there.
        """
        plan, cfg = self.plan, self.plan.cfg
        try:
            self.setup()
            start_step = self._restore()
            if start_step:
                yield Progress(start_step, plan.total_steps, f"resumed from checkpoint at step {start_step}")
            ema = last_loss = eval_loss = None
            every = plan.eval_every()
            for step in range(start_step, plan.total_steps):
                # One process stops before the next step; several agree at the end of one (below).
                if self.world == 1 and cancel is not None and cancel.is_set():
                    if step > start_step and step % cfg["save_every"]:
                        yield from self.checkpoint(step)
                    return {"status": "cancelled", "step": step}
                t0 = time.perf_counter()
                loss, tokens, grad_norm, stop = self.step(step, cancel)
                dt = time.perf_counter() - t0
                ema = dt if ema is None else 0.8 * ema + 0.2 * dt
                last_loss, done = loss, step + 1
                metrics = {
                    "loss": loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens / dt,
                    "eta_s": ema * (plan.total_steps - done),
                    "epoch": step // plan.steps_per_epoch,
                }
                if plan.sel.eval_ids and (done % every == 0 or done == plan.total_steps):
                    eval_loss = metrics["eval_loss"] = self.evaluate()
                self.acc.log({k: v for k, v in metrics.items() if k != "eta_s"}, step=done)
                yield Progress(done, plan.total_steps, metrics=metrics)
                if stop and done < plan.total_steps:
                    if done % cfg["save_every"]:
                        yield from self.checkpoint(done)
                    return {"status": "cancelled", "step": done}
                if done % cfg["save_every"] == 0 and done < plan.total_steps:
                    yield from self.checkpoint(done)
                if cfg.get("throttle_s"):  # tests: widen the window for a kill at a known step
                    time.sleep(float(cfg["throttle_s"]))
            self.acc.end_training()
            self.final_state = self._gathered_trainable_state()  # every rank, before rank 0 saves
            return {"status": "done", "step": plan.total_steps, "loss": last_loss, "eval_loss": eval_loss}
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

    def _gathered_trainable_state(self) -> dict | None:
        """The LoRA weights whole, by their PEFT names, when FSDP / ZeRO-3 shard them (a collective:
        every rank calls it); None when each process holds them whole already."""
        if not self._sharded_weights():
            return None
        state = self.acc.get_state_dict(self.module)
        names = {n for n, p in self.peft_model.named_parameters() if p.requires_grad}
        return {k.removeprefix("peft."): v for k, v in state.items() if k.removeprefix("peft.") in names}

    def checkpoint(self, step: int) -> Work[None]:
        """Save the state at `step` (rank 0 writes, every rank waits), then report it."""
        if self._sharded_weights():
            # Sharded optimizer state is not gathered into mirage's checkpoints (not built yet): say
            # so once instead of writing a checkpoint that would resume wrongly.
            if not getattr(self, "_said_no_ckpt", False) and self.acc.is_main_process:
                self._said_no_ckpt = True
                yield Progress(
                    step, self.plan.total_steps, "no checkpoints under FSDP / ZeRO-3: a kill restarts the run"
                )
            return
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

    def save_adapter(self, out: Path, *, base_id: str | None = None, card: str | None = None) -> Path:
        """The adapter as vLLM `--enable-lora` and PEFT read it: adapter_config.json (its base named
        by hub id, never by a local folder) + adapter_model.safetensors, the tokenizer, a model card.
        """
        import json

        peft_model = self.acc.unwrap_model(self.module).peft

        def write(tmp: Path) -> None:
            state = getattr(self, "final_state", None)  # gathered from FSDP / ZeRO-3 shards
            peft_model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state)
            self.plan.tok.save_pretrained(str(tmp))
            cfg = json.loads((tmp / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = base_id or self.plan.folder.name
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
            if card is not None:
                (tmp / "README.md").write_text(card)

        write_atomic_dir(out, write)
        return out
