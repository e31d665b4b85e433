"""Choices that make a LoRA step cheaper on a CPU without changing what is trained.

In a profile of mirage's step (`python benchmarks/profile_finetune.py`: SmolLM2-135M, batch 4,
max length 256, bf16, checkpointing), torch's dropout drew its LoRA masks one mt19937 draw per
element, serially, and twice per layer (checkpointing replays it): ~10% of the step; SDPA's CPU
flash kernel took ~18% on these short sequences, where the plain matmul-softmax attention is
cheaper. `benchmarks/bench_finetune.py`'s `torch_layers` ablation measures the two together.
"""

from __future__ import annotations

# Eager attention keeps each layer's probabilities (batch x heads x length^2, fp32 and a bf16 copy)
# for backward: it is chosen only while that stays below this for the layers held at once.
EAGER_ATTENTION_MAX_BYTES = 512 * 2**20


def attention_for(model_config, *, device: str, batch_size: int, max_length: int, checkpointing: bool) -> str | None:
    """The attention kernel for a run whose `--attn-implementation` is auto: "eager" on a CPU when
    its saved probabilities fit EAGER_ATTENTION_MAX_BYTES, else None (transformers' own choice)."""
    if not str(device).startswith("cpu"):
        return None
    cfg = getattr(model_config, "text_config", None) or model_config
    heads = getattr(cfg, "num_attention_heads", None)
    layers = getattr(cfg, "num_hidden_layers", None)
    if not heads or not layers:
        return None
    held = 1 if checkpointing else layers  # checkpointing recomputes one layer at a time
    saved = held * batch_size * heads * max_length**2 * 6  # fp32 probabilities + their bf16 copy
    return "eager" if saved <= EAGER_ATTENTION_MAX_BYTES else None


def dropout_module():
    import torch

    class CheapDropout(torch.nn.Module):
        """Dropout whose mask comes from 16 random bits per element, four elements per 64-bit draw
        of torch's generator: a quarter of the draws of `nn.Dropout` on a CPU. The keep test is
        bits >= p·65536 (p rounded to 1/65536); kept values are scaled by 1/(1-p) as nn.Dropout's
        are. Seeded runs stay reproducible: the draws come from torch's global generator, which
        activation checkpointing saves and restores for the replay."""

        def __init__(self, p: float):
            super().__init__()
            self.p = float(p)
            self.threshold = -32768 + round(self.p * 65536)

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            n = x.numel()
            # The full int64 range: a bare random_() leaves the top bit 0, and so one int16 in four
            # would never drop.
            draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
            keep = draws.view(torch.int16)[:n].view(x.shape) >= self.threshold
            return x * keep * (1.0 / (1.0 - self.p))

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return CheapDropout


def cheapen_lora_dropout(peft_model) -> None:
    """Swap peft's nn.Dropout on each LoRA input for CheapDropout of the same p."""
    import torch

    cheap = dropout_module()
    for m in peft_model.modules():
        drops = getattr(m, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name in list(drops.keys()):
                if type(drops[name]) is torch.nn.Dropout:
                    drops[name] = cheap(drops[name].p)
