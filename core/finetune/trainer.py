"""LoRA finetunes on imitation data: token-budget selection, assistant-only labels, a checkpointed loop.

A run is a background job (kind "finetune", lane "train": one at a time, the rest queue). Its data
is a prefix of ONE seeded shuffle of the dataset or subset, so token budgets nest: the 0.3M-token
run trains on a subset of the 1.5M-token run's examples. The loss is computed on assistant tokens
only; logits are computed only at those positions, in chunks (Gemma's 262k vocabulary makes the
output layer as costly as the whole body otherwise). Checkpoints (adapter, optimizer, scheduler,
RNG, data position) are written to a temp folder and renamed, so a `kill -9` at any moment leaves
the last complete one; `mirage jobs resume ID` continues from it with the same data order.
Finished adapters are saved in PEFT format and registered as models with their lineage.

The training loop is our own (on accelerate, so `accelerate launch -m core.finetune WS JOB` runs
it on several GPUs): transformers' Trainer / TRL's SFTTrainer compute full-vocabulary logits for
every position, autocast a float32 model on CPU, and checkpoint non-atomically;
benchmarks/bench_finetune.py measures the difference against SFTTrainer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import BadInput, JobError, MirageError, ModelError, NotFound
from core.models.loading import has_chat_template
from core.store.workspace import Workspace

# A documented default for base models without a usable chat template (e.g. Gemma-3-270M, a
# pretrained model whose GGUF template belongs to its instruction-tuned sibling). The adapter is
# saved with its tokenizer carrying this template, so generation uses the same format.
DEFAULT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}### System:\n{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### User:\n{{ m['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

# Small-model defaults (a 135M-270M base on a CPU); every one is overridable.
DEFAULTS: dict[str, Any] = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.05,
    "target_modules": "q_proj,v_proj",  # or "all-linear"
    "lr": 2e-4,
    "scheduler": "cosine",
    "warmup_ratio": 0.03,
    "epochs": 1,
    "batch_size": 4,
    "grad_accum": 1,
    "max_length": 512,
    "seed": 0,
    "max_steps": None,
    "dtype": "auto",  # bf16 where the device supports it, else fp32
    "save_every": 50,
    "template": "auto",  # auto: the base's chat template if it is a chat model, else DEFAULT_TEMPLATE
    "logit_chunk": 256,  # label positions per output-layer chunk (256 x 262k vocab x fp32 = 268 MB)
    "group_by_length": True,  # False: plain shuffled batches (benchmark ablation)
    # Activation checkpointing: recompute each layer in the backward pass instead of keeping its
    # activations (less memory, ~1/3 more compute). Off for small models on a CPU, where memory is
    # plentiful and time is not; turn it on for long sequences or bigger bases.
    "gradient_checkpointing": False,
    "loss_impl": "chunked",  # "full": the model's own loss over full-vocabulary logits (benchmark ablation)
    "throttle_s": 0.0,  # pause after each step (tests and demos: a window to kill a run mid-way)
}
INT_KEYS = (
    "rank",
    "alpha",
    "epochs",
    "batch_size",
    "grad_accum",
    "max_length",
    "seed",
    "max_steps",
    "save_every",
    "logit_chunk",
)
FLOAT_KEYS = ("dropout", "lr", "warmup_ratio", "throttle_s")
IGNORE = -100


# -- configuration ------------------------------------------------------------------------------------
def parse_tokens(text: str | None) -> list[int | None]:
    """'300k,1.5M,2000000' -> [300000, 1500000, 2000000]; empty -> [None] (all the data)."""
    if not text:
        return [None]
    out: list[int | None] = []
    for part in str(text).split(","):
        p = part.strip().lower().replace("_", "")
        mult = 1
        if p.endswith(("k", "m", "b")):
            mult = {"k": 10**3, "m": 10**6, "b": 10**9}[p[-1]]
            p = p[:-1]
        try:
            n = int(round(float(p) * mult))
        except ValueError:
            raise BadInput("--tokens", f"'{part.strip()}' is not a token count (e.g. 300k, 1.5M)") from None
        if n <= 0:
            raise BadInput("--tokens", f"budget must be positive (got '{part.strip()}')")
        out.append(n)
    return out


def human_tokens(n: int | None) -> str:
    if n is None:
        return "all"
    if n >= 10**6:
        return f"{n / 10**6:g}M"
    if n >= 10**3:
        return f"{n / 10**3:g}k"
    return str(n)


def make_config(base: str, data: str, *, tokens: int | None = None, name: str | None = None, **overrides) -> dict:
    """A run's full configuration: defaults with overrides, validated (bad values name the option)."""
    cfg = dict(DEFAULTS)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in DEFAULTS:
            raise BadInput("finetune", f"unknown option '{k}'")
        cfg[k] = v
    for k in INT_KEYS:
        if cfg[k] is not None:
            try:
                cfg[k] = int(cfg[k])
            except (TypeError, ValueError):
                raise BadInput("finetune", f"expected an integer, got '{cfg[k]}'", field=k) from None
    for k in FLOAT_KEYS:
        try:
            cfg[k] = float(cfg[k])
        except (TypeError, ValueError):
            raise BadInput("finetune", f"expected a number, got '{cfg[k]}'", field=k) from None
    for k in ("rank", "alpha", "epochs", "batch_size", "grad_accum", "max_length", "save_every", "logit_chunk"):
        if cfg[k] < 1:
            raise BadInput("finetune", f"must be at least 1 (got {cfg[k]})", field=k)
    if cfg["max_steps"] is not None and cfg["max_steps"] < 1:
        raise BadInput("finetune", f"must be at least 1 (got {cfg['max_steps']})", field="max_steps")
    if not 0 <= cfg["dropout"] < 1:
        raise BadInput("finetune", f"must be in [0, 1) (got {cfg['dropout']})", field="dropout")
    if cfg["dtype"] not in ("auto", "bf16", "fp32", "fp16"):
        raise BadInput("finetune", f"one of auto, bf16, fp32, fp16 (got '{cfg['dtype']}')", field="dtype")
    if cfg["template"] not in ("auto", "base", "default"):
        raise BadInput("finetune", f"one of auto, base, default (got '{cfg['template']}')", field="template")
    if cfg["scheduler"] not in ("cosine", "linear", "constant_with_warmup"):
        raise BadInput(
            "finetune", f"one of cosine, linear, constant_with_warmup (got '{cfg['scheduler']}')", field="scheduler"
        )
    if cfg["loss_impl"] not in ("chunked", "full"):
        raise BadInput("finetune", f"one of chunked, full (got '{cfg['loss_impl']}')", field="loss_impl")
    cfg["group_by_length"] = bool(cfg["group_by_length"])
    cfg["gradient_checkpointing"] = bool(cfg["gradient_checkpointing"])
    cfg.update(base=base, data=data, tokens=tokens, name=name)
    return cfg


# -- the base model -------------------------------------------------------------------------------------
def resolve_base(ws: Workspace, base: str) -> tuple[Path, bool]:
    """(HF folder, is_chat_model) for a registered model name or a path to a HF folder."""
    p = Path(base).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BadInput(str(p), "no config.json: not a Hugging Face model folder", field="base")
        return p.resolve(), has_chat_template(p)
    from core.models import registry as models

    try:
        entry = models.get_model(ws, base)
    except NotFound as e:
        raise NotFound(f"unknown base model '{base}': {e.message}") from None
    if not models.model_kind(ws, base).own_weights:
        raise BadInput("--base", f"'{base}' is a {entry['kind']} model; a base needs local weights", field="base")
    folder = models.local_folder(ws, base, quiet=True)
    return Path(folder), models.prompt_style(ws, base) == "chat"


def load_tokenizer(folder: Path, template: str, is_chat: bool):
    """The base's tokenizer with the template the run uses; returns (tokenizer, template name)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    use_base = template == "base" or (template == "auto" and is_chat and tok.chat_template)
    if template == "base" and not tok.chat_template:
        raise BadInput(str(folder), "the base has no chat template; use --template default", field="template")
    if not use_base:
        tok.chat_template = DEFAULT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if not tok.is_fast:
        raise ModelError(f"{folder}: a fast tokenizer is needed (offsets locate the assistant tokens)")
    return tok, ("base" if use_base else "default")


# -- examples -> tokens and labels ----------------------------------------------------------------------------
def _render(tok, messages: list[dict], *, generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model is trained to produce.

    For each assistant turn: what the template adds after the generation prompt (the reply and
    its end-of-turn marker). Found by rendering growing prefixes, so any template works; a
    template that rewrites earlier turns (prefix property broken) falls back to locating the
    reply's text.
    """
    full = _render(tok, messages)
    spans: list[tuple[int, int]] = []
    search_from = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i == 0:
            continue
        before = _render(tok, messages[:i], generation_prompt=True)
        upto = _render(tok, messages[: i + 1])
        if upto.startswith(before) and full.startswith(upto):
            start, end = len(before), len(upto)
            while end > start and upto[end - 1].isspace():
                end -= 1
        else:
            start = full.find(m["content"], search_from)
            if start < 0:
                continue
            end = start + len(m["content"])
        if end > start:
            spans.append((start, end))
            search_from = end
    return full, spans


def encode(tok, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE on system, user and template tokens), truncated to max_length."""
    text, spans = assistant_spans(tok, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    si = 0
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        while si < len(spans) and spans[si][1] <= a:
            si += 1
        if si < len(spans) and b > a and spans[si][0] <= a < spans[si][1]:
            labels[t] = ids[t]
    return ids[:max_length], labels[:max_length]


@dataclass
class Selection:
    """The examples a run trains on, in the seeded order, with their encodings."""

    example_ids: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    tokens: int = 0
    label_tokens: int = 0
    available: int = 0  # examples in the data
    exhausted: bool = False  # the budget reached past the end of the data
    skipped: int = 0  # examples with no assistant token left after truncation

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.hashes).encode()).hexdigest()


def shuffled_examples(ws: Workspace, data: str, seed: int) -> list[dict]:
    """All examples of a dataset or subset in ONE seeded order (independent of budget and model)."""
    from core.data.datasets import iter_examples

    rows = sorted(iter_examples(ws, data, columns="id, content_hash, conversation"), key=lambda r: r["id"])
    random.Random(seed).shuffle(rows)
    return rows


def select(ws: Workspace, data: str, budget: int | None, seed: int, tok, max_length: int) -> Selection:
    """The prefix of the seeded shuffle whose (trained) tokens fit the budget; budgets nest."""
    rows = shuffled_examples(ws, data, seed)
    sel = Selection(available=len(rows))
    if not rows:
        raise BadInput(data, "the dataset has no examples", field="data")
    for r in rows:
        if budget is not None and sel.tokens >= budget:
            break
        ids, labels = encode(tok, r["conversation"], max_length)
        n_label = sum(1 for x in labels if x != IGNORE)
        if n_label == 0:
            sel.skipped += 1
            continue
        sel.example_ids.append(r["id"])
        sel.hashes.append(r["content_hash"])
        sel.ids.append(ids)
        sel.labels.append(labels)
        sel.tokens += len(ids)
        sel.label_tokens += n_label
    else:
        sel.exhausted = budget is not None and sel.tokens < budget
    if not sel.ids:
        raise BadInput(data, "no example has an assistant reply to train on", field="conversation")
    return sel


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, *, group_by_length: bool = True
) -> list[list[int]]:
    """Length-grouped batches: similar lengths share a batch (little padding), batch order shuffled.

    A pure function of (lengths, seed, epoch), so a resumed run replays the same order from its
    step counter alone.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * 32 if group_by_length else batch_size
    batches: list[list[int]] = []
    for g in range(0, len(order), group):
        chunk = sorted(order[g : g + group], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


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


# -- the loss: output layer only where labels are, in chunks -----------------------------------------------
def _linear_cross_entropy():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of (h @ W.T) against targets without materialising all logits.

        The output layer is frozen (LoRA never adapts it here), so the gradient with respect to `h`
        is computed chunk by chunk in the forward pass and stored (n x hidden, small); the logits of
        one chunk are the only vocabulary-sized tensor alive at any time.
        """

        @staticmethod
        def forward(ctx, h, weight, targets, chunk, softcap):
            n = h.shape[0]
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            grad = torch.empty_like(h)
            for s in range(0, n, chunk):
                logits = (h[s : s + chunk] @ weight.t()).float()
                if softcap:
                    tanh = torch.tanh(logits / softcap)
                    logits = tanh * softcap
                tgt = targets[s : s + chunk]
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(tgt.shape[0], device=h.device), tgt] -= 1.0
                if softcap:
                    probs.mul_(1.0 - tanh * tanh)
                grad[s : s + chunk] = probs.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, g):
            (grad,) = ctx.saved_tensors
            return grad * g.to(grad.dtype), None, None, None, None

    return LinearCrossEntropy


def _trainable_module(peft_model, logit_chunk: int, loss_impl: str = "chunked"):
    """A module whose forward returns (summed loss, label count): DDP-wrappable by accelerate."""
    import torch

    lce = _linear_cross_entropy()
    causal_lm = peft_model.get_base_model()
    body = causal_lm.model
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None) or 0.0

    class Trainable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.peft = peft_model

        def forward(self, input_ids, attention_mask, labels):
            if loss_impl == "full":  # the model's own loss: logits for every position and the whole vocabulary
                n = (labels[:, 1:] != IGNORE).sum()
                out = self.peft(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
                return out.loss * n, n
            hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            targets = labels[:, 1:]
            mask = targets != IGNORE
            h = hidden[:, :-1][mask]
            t = targets[mask]
            loss_sum = lce.apply(h, head.weight, t, logit_chunk, softcap)
            return loss_sum, mask.sum()

    return Trainable()


# -- plan: everything a run (or a dry run) needs before the model loads ------------------------------------------
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


def collate(plan: Plan, idx: list[int], device):
    """Right-padded tensors for one micro-batch of selection indices."""
    import torch

    width = max(len(plan.sel.ids[i]) for i in idx)
    pad = plan.tok.pad_token_id
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    att = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(plan.sel.ids[i])
        ids[r, :n] = torch.tensor(plan.sel.ids[i])
        labels[r, :n] = torch.tensor(plan.sel.labels[i])
        att[r, :n] = 1
    return ids.to(device), att.to(device), labels.to(device)


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


def _dtype_name(dtype) -> str:
    return (
        str(dtype)
        .replace("torch.", "")
        .replace("bfloat16", "bf16")
        .replace("float32", "fp32")
        .replace("float16", "fp16")
    )


# -- checkpoints ------------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Write a folder's content into a temp sibling, fsync, then rename: it exists whole or not at all.

    Disk full (or a file size limit) mid-write removes the temp folder and raises a JobError; the
    previous checkpoint is untouched.
    """
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise JobError(
                f"disk full while writing {final} ({os.strerror(e.errno)}); the previous"
                " checkpoint is intact: free space, then `mirage jobs resume`"
            ) from None
        raise
    except RuntimeError as e:  # torch.save reports a failed write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        if "write" in str(e).lower() or "file" in str(e).lower():
            raise JobError(
                f"could not write {final} ({str(e).splitlines()[0]}); the previous checkpoint"
                " is intact: free space, then `mirage jobs resume`"
            ) from None
        raise


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and (p / "state.json").is_file())
    return ckpts[-1] if ckpts else None


def _trainable_state(peft_model) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in peft_model.named_parameters() if v.requires_grad}


def save_checkpoint(run_dir: Path, step: int, peft_model, optimizer, scheduler, extra: dict) -> Path:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(_trainable_state(peft_model), str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, sort_keys=True))

    final = run_dir / f"ckpt-{step:08d}"
    _write_atomic_dir(final, write)
    for old in run_dir.glob("ckpt-*"):  # keep only the newest complete checkpoint
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, peft_model, optimizer, scheduler) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter.safetensors"))
    params = dict(peft_model.named_parameters())
    for k, v in weights.items():
        params[k].data.copy_(v.to(params[k].device))
    st = torch.load(ckpt / "optim.pt", weights_only=False)
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())


# -- training --------------------------------------------------------------------------------------------------
def _oom(cfg: dict) -> JobError:
    return JobError(
        f"out of memory at batch size {cfg['batch_size']} x max length {cfg['max_length']}:"
        " lower --batch-size (raise --grad-accum to keep the effective batch) or --max-length"
    )


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


class Trainer:
    """One run's loop over a Plan; `event(**fields)` records progress, `cancelled()` stops it."""

    def __init__(
        self,
        plan: Plan,
        run_dir: Path,
        *,
        event: Callable[..., None] = lambda **k: None,
        cancelled: Callable[[], bool] = lambda: False,
        accelerator=None,
        record_batches: bool = True,
    ):
        self.plan, self.run_dir, self.event, self.cancelled = plan, run_dir, event, cancelled
        self.record_batches = record_batches
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=not _cuda())
        self.acc = accelerator
        if plan.world != self.acc.num_processes:
            raise JobError(f"planned for {plan.world} processes, running in {self.acc.num_processes}")

    def setup(self):
        import torch
        from transformers import get_scheduler

        cfg = self.plan.cfg
        self.peft_model, self.dtype = build_model(self.plan, str(self.acc.device))
        self.module = _trainable_module(self.peft_model, cfg["logit_chunk"], cfg.get("loss_impl", "chunked"))
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
        warmup = math.ceil(cfg["warmup_ratio"] * self.plan.total_steps)
        self.scheduler = get_scheduler(
            cfg["scheduler"], self.optimizer, num_warmup_steps=warmup, num_training_steps=self.plan.total_steps
        )
        self.module, self.optimizer = self.acc.prepare(self.module, self.optimizer)

    def step(self, step: int) -> tuple[float, int, list[int]]:
        """One optimizer step at global `step` (0-based): (mean loss, tokens seen, example ids)."""
        import torch

        plan = self.plan
        micro = plan.micro_batches(step, self.acc.process_index)
        self.module.train()
        loss_total, tokens = 0.0, 0
        batch_ids: list[int] = []
        for mb in micro:
            ids, att, labels = collate(plan, mb, self.acc.device)
            loss_sum, n = self.module(ids, att, labels)
            n = max(int(n), 1)
            # Mean over this micro-batch's label tokens, averaged over the accumulation steps.
            self.acc.backward(loss_sum / n / len(micro))
            loss_total += float(loss_sum.detach()) / n / len(micro)
            tokens += int(att.sum())
            batch_ids.extend(plan.sel.example_ids[i] for i in mb)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.acc.num_processes > 1:
            t = torch.tensor([loss_total, tokens], device=self.acc.device, dtype=torch.float64)
            t = self.acc.reduce(t, reduction="sum")
            loss_total, tokens = float(t[0]) / self.acc.num_processes, int(t[1])
        return loss_total, tokens, batch_ids

    def run(self) -> dict:
        plan, cfg = self.plan, self.plan.cfg
        start_step = 0
        ckpt = latest_checkpoint(self.run_dir)
        try:
            self.setup()
            if ckpt is not None:
                state = load_checkpoint(ckpt, self.peft_model, self.optimizer, self.scheduler)
                if state.get("fingerprint") != plan.sel.fingerprint:
                    raise JobError(
                        f"the data changed since this run started (fingerprint {plan.sel.fingerprint[:12]}"
                        f" != {str(state.get('fingerprint'))[:12]}); start a new run"
                    )
                start_step = int(state["step"])
                self.event(
                    step=start_step,
                    total_steps=plan.total_steps,
                    message=f"resumed from checkpoint at step {start_step}",
                )
            ema = None
            last_loss = None
            for step in range(start_step, plan.total_steps):
                if self.cancelled():
                    if step > start_step and step % cfg["save_every"]:
                        self.checkpoint(step)  # a cancelled run resumes where it stopped
                    return {"status": "cancelled", "step": step}
                t0 = time.perf_counter()
                loss, tokens, batch_ids = self.step(step)
                dt = time.perf_counter() - t0
                ema = dt if ema is None else 0.8 * ema + 0.2 * dt
                last_loss = loss
                done = step + 1
                extra = {"epoch": step // plan.steps_per_epoch}
                if self.record_batches:
                    extra["batch_ids"] = batch_ids
                if self.acc.is_main_process:
                    self.event(
                        step=done,
                        total_steps=plan.total_steps,
                        loss=loss,
                        lr=self.scheduler.get_last_lr()[0],
                        tokens_per_s=tokens / dt,
                        eta_s=ema * (plan.total_steps - done),
                        **extra,
                    )
                if done % cfg["save_every"] == 0 and done < plan.total_steps:
                    self.checkpoint(done)
                if cfg.get("throttle_s"):  # tests: widen the window for a kill at a known step
                    time.sleep(float(cfg["throttle_s"]))
            return {"status": "done", "step": plan.total_steps, "loss": last_loss}
        except MirageError:
            raise
        except Exception as e:
            if _is_oom(e):
                raise _oom(cfg) from None
            raise

    def checkpoint(self, step: int) -> None:
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
            self.event(step=step, total_steps=self.plan.total_steps, message=f"checkpoint at step {step}")
        self.acc.wait_for_everyone()

    def save_adapter(self, out: Path) -> Path:
        peft_model = self.acc.unwrap_model(self.module).peft

        def write(tmp: Path) -> None:
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
            self.plan.tok.save_pretrained(str(tmp))
            cfg = json.loads((tmp / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = str(self.plan.folder)
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))

        _write_atomic_dir(out, write)
        return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# -- dry run ---------------------------------------------------------------------------------------------------
def dry_run(ws: Workspace, cfg: dict) -> dict:
    """What a run would do: examples, tokens, steps, and an estimate from one measured step."""
    import tempfile

    plan = make_plan(ws, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(plan, Path(tmp), record_batches=False)
        trainer.setup()
        t0 = time.perf_counter()
        loss, tokens, _ = trainer.step(0)
        dt = time.perf_counter() - t0
    ex_idx = plan.micro_batches(0)[0][0] if plan.micro_batches(0) else 0
    sample_text = plan.tok.decode(plan.sel.ids[ex_idx])
    trained = plan.tok.decode([t for t in plan.sel.labels[ex_idx] if t != IGNORE])
    return {
        **plan.summary(),
        "step_seconds": dt,
        "step_tokens": tokens,
        "first_loss": loss,
        "estimated_seconds": dt * plan.total_steps,
        "dtype": _dtype_name(trainer.dtype),
        "device": str(trainer.acc.device),
        "sample": sample_text,
        "sample_trained": trained,
    }


# -- jobs ---------------------------------------------------------------------------------------------------------
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
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}-{k}", k + 1
    return name


def validate(ws: Workspace, cfg: dict) -> None:
    """Fail fast (before a job is queued) on an unknown base or data, or data with nothing in it."""
    from core.data.datasets import count_examples

    p = Path(cfg["base"]).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BadInput(str(p), "no config.json: not a Hugging Face model folder", field="base")
    else:
        from core.models import registry as models

        try:
            entry = models.get_model(ws, cfg["base"])
        except NotFound as e:
            raise NotFound(f"unknown base model '{cfg['base']}': {e.message}") from None
        if not models.model_kind(ws, cfg["base"]).own_weights:
            raise BadInput(
                "--base", f"'{cfg['base']}' is a {entry['kind']} model; a base needs local weights", field="base"
            )
    n, _ = count_examples(ws, cfg["data"])
    if n == 0:
        raise BadInput(cfg["data"], "the dataset has no examples", field="data")


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
    from core.runtime import jobs

    budgets = tokens or [None]
    cfgs = []
    for b in budgets:
        run_name = name if len(budgets) == 1 else (f"{name}-{human_tokens(b)}" if name else None)
        cfg = make_config(base, data, tokens=b, name=run_name, **overrides)
        cfgs.append(cfg)
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
        job_id = jobs.create(ws, "finetune", cfg["name"], cfg)
        ids.append(job_id)
    for job_id in ids:
        if not start:
            continue
        if detach:
            jobs.spawn(ws, job_id)
        else:
            jobs.run(ws, job_id, on_event=on_event)
    return ids


def budget_notes(ws: Workspace, data: str, budgets: list[int | None]) -> list[str]:
    """Budgets beyond the data, judged cheaply from the token counts stored at import."""
    from core.data.datasets import count_examples

    n, tokens = count_examples(ws, data)
    return [
        f"budget {human_tokens(b)} is larger than '{data}' (~{tokens:,} tokens in {n} examples):"
        " that run uses all of it"
        for b in budgets
        if b is not None and b > tokens
    ]


def _register_adapter(ws: Workspace, cfg: dict, out: Path, plan: Plan, job_id: int) -> str:
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
            base, k = stem, 2
            while base in taken:
                base, k = f"{stem}-{k}", k + 1
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
    }
    from core.data.datasets import get_dataset

    lineage["data_kind"] = get_dataset(ws, cfg["data"])["kind"]
    models.register(ws, cfg["name"], "adapter", {"path": str(out), "base": base, "lineage": lineage}, replace=True)
    return cfg["name"]


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
        tmp = run_dir / ".run.json.tmp"
        tmp.write_text(json.dumps({**summary, "config": cfg}, sort_keys=True, indent=1))
        os.replace(tmp, record)
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
    trainer = Trainer(plan, run_dir, event=ctx.event, cancelled=ctx.cancel.is_set)
    ctx.event(message=f"training on {trainer.acc.device}")
    result = trainer.run()
    if result["status"] != "done":
        return  # cancelled: the runner records it; the last checkpoint stays for a resume
    if not trainer.acc.is_main_process:
        return
    out = ctx.ws.artifact_dir("adapters") / cfg["name"]
    trainer.save_adapter(out)
    model_name = _register_adapter(ctx.ws, cfg, out, plan, ctx.id)
    rec = json.loads(record.read_text())
    rec.update(
        adapter=model_name, adapter_path=str(out), final_loss=result.get("loss"), dtype=_dtype_name(trainer.dtype)
    )
    tmp = run_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(rec, sort_keys=True, indent=1))
    os.replace(tmp, record)
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
    from core.runtime import jobs

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


# -- accelerate launch entry point ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """`accelerate launch -m core.finetune WORKSPACE JOB_ID`: every process trains; rank 0 records.

    Create the job first without starting it: `mirage finetune ... --no-start` prints its id.
    """
    from accelerate import PartialState

    from core.runtime import jobs

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: accelerate launch -m core.finetune WORKSPACE JOB_ID", file=sys.stderr)
        return 2
    ws = Workspace.open(argv[0])
    state = PartialState()
    if state.is_main_process:
        job = jobs.run(ws, int(argv[1]))
        return 0 if job["status"] in ("done", "cancelled") else 1
    job = jobs.get_job(ws, int(argv[1]))
    plan = make_plan(ws, job["config"])
    Trainer(plan, ws.artifact_dir("jobs", str(job["id"]))).run()
    return 0
