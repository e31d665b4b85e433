"""Choices that make a LoRA step cheaper on a CPU without changing what is trained.

In a profile of mirage's step (`python benchmarks/profile_finetune.py`: SmolLM2-135M, batch 4,
max length 256, bf16, checkpointing), torch's dropout drew its LoRA masks one mt19937 draw per
element, serially, and twice per layer (checkpointing replays it): ~10% of the step; SDPA's CPU
flash kernel took ~18% on these short sequences, where the plain matmul-softmax attention is
cheaper. `benchmarks/bench_finetune.py`'s `torch_layers` ablation measures the two together.
"""

from __future__ import annotations

import functools

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
            return x * self.keep_mask(x) * (1.0 / (1.0 - self.p))

        def keep_mask(self, x):
            """The boolean keep mask forward multiplies by (training, p > 0)."""
            n = x.numel()
            # The full int64 range: a bare random_() leaves the top bit 0, and so one int16 in four
            # would never drop.
            draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
            return draws.view(torch.int16)[:n].view(x.shape) >= self.threshold

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


def lean_lora_forwards(peft_model) -> int:
    """Give each peft LoRA Linear a forward that computes its adapter in the base's dtype, with
    the same result: `base(x) + B(A(dropout(x))) * scaling`. Returns how many layers got it.

    peft casts the input to the adapter's fp32 and runs dropout, A, B, the scaling and the sum on
    full-width fp32 tensors, a copy and about six elementwise passes over the activations per
    adapted layer, replayed under checkpointing. Here only A and B (rank x width, small) are cast
    to the base's dtype each call (their fp32 values stay the optimizer's master weights, and
    their gradients come back through the cast in fp32), the dropout scale and `scaling` are applied
    to the rank-wide intermediate, and the sum is the output matmul's own accumulate (addmm).
    That is autocast's arithmetic (TRL's bf16 on a CPU) without autocast's per-op dispatch.
    Layers peft runs differently (merged, disabled, several adapters, variants such as DoRA,
    adapter biases, per-call adapter names) keep peft's forward.
    """
    import types

    from peft.tuners.lora.layer import Linear as LoraLinear

    n = 0
    for m in peft_model.modules():
        if type(m) is LoraLinear:
            m.forward = types.MethodType(_lean_forward, m)
            n += 1
    return n


def _lean_forward(self, x, *args, **kwargs):
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    active = self.active_adapters
    name = active[0] if len(active) == 1 else None
    if (
        args
        or kwargs
        or name is None
        or self.disable_adapters
        or self.merged
        or name not in self.lora_A
        or name in self.lora_variant
        or self.lora_B[name].bias is not None
    ):
        return LoraLinear.forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    dtype = result.dtype
    drop = self.lora_dropout[name]
    scale = self.scaling[name]
    if isinstance(drop, torch.nn.Identity) or not drop.training or getattr(drop, "p", 0.0) == 0.0:
        dropped = x
    elif hasattr(drop, "keep_mask"):  # CheapDropout: its 1/(1-p) goes onto the rank-wide tensor
        dropped = x * drop.keep_mask(x)
        scale = scale / (1.0 - drop.p)
    else:
        dropped = drop(x)
    a = self.lora_A[name].weight.to(dtype)
    b = self.lora_B[name].weight.to(dtype)
    h = torch.nn.functional.linear(dropped.to(dtype), a) * scale
    out = result.reshape(-1, result.shape[-1])
    return torch.addmm(out, h.reshape(-1, h.shape[-1]), b.t()).view(result.shape)


@functools.cache
def rms_norm_function():
    import torch

    class FrozenRMSNorm(torch.autograd.Function):
        """Llama-style RMSNorm, `w * (x.float() * rsqrt(mean(x²) + eps)).to(x.dtype)`, with a frozen
        weight and a backward written out. The forward is the module's own arithmetic (so its
        output is the module's, bit for bit; a product written into a tensor of x's dtype rounds
        as the module's cast does); autograd's backward through those ops (pow, mean, rsqrt, two
        casts, two products) is about a dozen passes over the activations, this one is four. It
        keeps the fp32 input it made for the forward rather than casting x again."""

        @staticmethod
        def forward(ctx, x, weight, eps):
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(xf, weight, rstd)
            return torch.mul(xf, rstd, out=torch.empty_like(x)).mul_(weight)

        @staticmethod
        def backward(ctx, grad):
            xf, weight, rstd = ctx.saved_tensors
            # autograd's product of grad and weight is in x's dtype, then cast: the same here
            gh = torch.mul(grad, weight, out=torch.empty_like(xf))
            # d/dx of x * rsqrt(mean(x²) + eps): rstd * gh - x * rstd³ * mean(gh * x)
            coef = torch.linalg.vecdot(gh, xf).unsqueeze(-1) * rstd.pow(3) / xf.shape[-1]
            return torch.addcmul(gh.mul_(rstd), xf, coef, value=-1, out=torch.empty_like(grad)), None, None

    return FrozenRMSNorm


def fused_rms_norms(model) -> int:
    """Give each RMSNorm of `model` whose weight is frozen FrozenRMSNorm's forward and backward,
    where a probe shows that forward gives the module's own output exactly. Returns how many.

    The probe is what decides, not the class's name: a norm of another shape (Gemma's
    `x * (1 + w)` in fp32, a norm with a bias) gives a different output and keeps its forward."""
    import types

    import torch

    fn = rms_norm_function()
    n = 0
    for m in model.modules():
        weight = getattr(m, "weight", None)
        eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
        if (
            "RMSNorm" not in type(m).__name__
            or not isinstance(weight, torch.nn.Parameter)
            or weight.requires_grad
            or weight.dim() != 1
            or not isinstance(eps, float)
        ):
            continue
        gen = torch.Generator().manual_seed(0)
        probe = (torch.randn(3, weight.shape[0], generator=gen) * 3).to(weight.dtype)
        try:
            with torch.no_grad():
                same = torch.equal(m(probe), fn.apply(probe, weight, eps))
        except (TypeError, RuntimeError):  # a forward that wants more than the hidden states
            same = False
        if not same:
            continue
        m.fused_norm_eps = eps
        m.forward = types.MethodType(_fused_norm_forward, m)
        n += 1
    return n


def _fused_norm_forward(self, x):
    return rms_norm_function().apply(x, self.weight, self.fused_norm_eps)
