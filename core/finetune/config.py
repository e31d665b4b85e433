"""A finetune run's configuration: the typed fields a user sets, the knobs only tests and benchmarks set.

`FinetuneConfig` is the only declaration of what a user may configure: each field's type, default,
help text and choices are read by `make_config` (validation), `mirage finetune` (its options are
generated from the fields) and the Jobs screen's launch form. `FinetuneKnobs` holds settings that
are fixed for users and exposed to nobody but tests and benchmarks. A job stores the merged plain
dict (`make_config`), so workspaces written before this module read the same.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from core.errors import BadInput


def setting(default: Any, help: str, *, label: str = "", default_text: str | None = None, **rules: Any) -> Any:
    """A dataclass field with its help text and validation rules (`choices`, `at_least`, `below`)."""
    return field(default=default, metadata={"help": help, "label": label, "default_text": default_text, **rules})


@dataclass(frozen=True)
class FinetuneConfig:
    """Small-model defaults (a 135M-270M base on a CPU); every one is overridable."""

    rank: int = setting(8, "LoRA rank.", label="LoRA rank", at_least=1)
    alpha: int = setting(16, "LoRA alpha.", at_least=1)
    dropout: float = setting(0.05, "LoRA dropout.", at_least=0, below=1)
    target_modules: str = setting("q_proj,v_proj", "Comma-separated module names, or all-linear.")
    lr: float = setting(2e-4, "Peak learning rate.", label="learning rate", default_text="2e-4")
    scheduler: str = setting(
        "cosine",
        "Learning-rate schedule (with 3% warmup).",
        choices=("cosine", "linear", "constant_with_warmup"),
    )
    epochs: int = setting(1, "Passes over the selected data.", label="epochs", at_least=1)
    batch_size: int = setting(4, "Examples per micro-batch.", label="batch size", at_least=1)
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", at_least=1)
    max_length: int = setting(512, "Tokens per example (longer ones are truncated).", label="max length", at_least=1)
    seed: int = setting(0, "Seed of the data shuffle, the LoRA init and dropout.")
    max_steps: int | None = setting(None, "Stop after N optimizer steps (overrides --epochs).", at_least=1)
    dtype: str = setting(
        "auto", "Weights dtype; auto = bf16 where supported.", choices=("auto", "bf16", "fp32", "fp16")
    )
    template: str = setting(
        "auto",
        "Chat template: the base's (chat models), or mirage's default (### User: / ### Assistant:).",
        choices=("auto", "base", "default"),
    )
    # Activation checkpointing costs ~1/3 more compute for less memory: off for small models on a
    # CPU, where memory is plentiful and time is not.
    gradient_checkpointing: bool = setting(
        False,
        "Recompute activations in the backward pass: less memory, ~1/3 more compute.",
        default_text="off",
    )
    save_every: int = setting(50, "Checkpoint every N optimizer steps.", at_least=1)
    max_grad_norm: float = setting(1.0, "Clip the gradient to this norm (0: no clipping).", at_least=0)
    weight_decay: float = setting(0.0, "AdamW weight decay on the LoRA weights.", at_least=0)
    # A held-out split is what tells learning from memorising; "auto" holds out 5% (2 to 200
    # examples) once the data has 20 examples, fewer is too few to spare (the log says so).
    eval_fraction: float | None = setting(
        None,
        "Share of the data held out for eval_loss (0: none).",
        default_text="auto: 5% from 20 examples",
        at_least=0,
        below=1,
    )
    eval_data: str | None = setting(None, "A dataset to compute eval_loss on instead of a held-out split.")
    eval_every: int | None = setting(
        None,
        "Compute eval_loss every N optimizer steps (and at the end).",
        default_text="up to 5 times a run, within ~20% of the training time",
        at_least=1,
    )
    report_to: str = setting(
        "none", "Also log to a tracker (through accelerate).", choices=("none", "tensorboard", "wandb")
    )
    attn_implementation: str = setting(
        "auto",
        "Attention kernel; auto = eager on a CPU while its memory is small, else transformers' choice (sdpa).",
        choices=("auto", "sdpa", "eager", "flash_attention_2"),
    )
    qlora: bool = setting(
        False, "Load the base in 4 bits (QLoRA; needs bitsandbytes and a CUDA GPU).", default_text="off"
    )


@dataclass(frozen=True)
class FinetuneKnobs:
    """Settings fixed for users; tests and benchmarks override them through `make_config`."""

    warmup_ratio: float = setting(0.03, "Share of the steps spent warming the learning rate up.")
    # 256 label positions x a 262k vocabulary x fp32 = 268 MB of logits per chunk.
    logit_chunk: int = setting(256, "Label positions per output-layer chunk.", at_least=1)
    group_by_length: bool = setting(True, "Batch similar lengths together (False: plain shuffled batches).")
    loss_impl: str = setting(
        "chunked", "full: the model's own loss over full-vocabulary logits.", choices=("chunked", "full")
    )
    cheap_dropout: bool = setting(True, "On a CPU, LoRA dropout masks from 16-bit draws (core/finetune/cpu.py).")
    lean_lora: bool = setting(True, "On a CPU, LoRA adapters computed in the base's dtype (core/finetune/cpu.py).")
    fused_norm: bool = setting(True, "On a CPU, frozen RMSNorms with a written-out backward (core/finetune/cpu.py).")
    throttle_s: float = setting(0.0, "Pause after each step (a window to kill a run mid-way).")
    eval_max_examples: int = setting(200, "At most this many held-out examples (eval time stays small).", at_least=1)


def user_fields() -> tuple[dataclasses.Field, ...]:
    """The fields a user sets (CLI options, the launch form), in declaration order."""
    return dataclasses.fields(FinetuneConfig)


def field_type(cls: type, name: str) -> type:
    """The plain type of a field: int, float, str or bool (an optional field's non-None type)."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def default_text(f: dataclasses.Field) -> str | None:
    """How a field's default is shown to a user ("2e-4", "off"); None when it has none."""
    if f.metadata.get("default_text") is not None:
        return f.metadata["default_text"]
    return None if f.default is None else str(f.default)


def _coerce(cls: type, f: dataclasses.Field, value: Any) -> Any:
    kind = field_type(cls, f.name)
    if value is None:
        return None
    if kind is bool:
        return bool(value)
    if kind is int:
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise BadInput("finetune", f"expected an integer, got '{value}'", field=f.name) from None
    elif kind is float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise BadInput("finetune", f"expected a number, got '{value}'", field=f.name) from None
    rules = f.metadata
    if "choices" in rules and value not in rules["choices"]:
        raise BadInput("finetune", f"one of {', '.join(rules['choices'])} (got '{value}')", field=f.name)
    low, high = rules.get("at_least"), rules.get("below")
    if high is not None and not low <= value < high:
        raise BadInput("finetune", f"must be in [{low}, {high}) (got {value})", field=f.name)
    if low is not None and value < low:
        raise BadInput("finetune", f"must be at least {low} (got {value})", field=f.name)
    return value


def make_config(base: str, data: str, *, tokens: int | None = None, name: str | None = None, **overrides) -> dict:
    """A run's full configuration as the plain dict a job stores: defaults with overrides, validated.

    A None override keeps the default (an option not given); a bad value names its field.
    """
    known = {f.name: (cls, f) for cls in (FinetuneConfig, FinetuneKnobs) for f in dataclasses.fields(cls)}
    for k in overrides:
        if k not in known:
            raise BadInput("finetune", f"unknown option '{k}'")
    cfg: dict[str, Any] = {}
    for k, (cls, f) in known.items():
        value = overrides.get(k)
        cfg[k] = _coerce(cls, f, f.default if value is None else value)
    cfg.update(base=base, data=data, tokens=tokens, name=name)
    return cfg


# -- token budgets ----------------------------------------------------------------------------------------
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
