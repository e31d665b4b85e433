"""nn.Linear through oneDNN on weights packed once per layer, for the duration of a call.

torch's CPU linear repacks its weight on every call: MKL sgemm in fp32, and under bf16 autocast a
cast of the weight to bf16 plus oneDNN's reorder. Where a call's arithmetic is small (decode steps;
MiniLM's 384-wide layers) that repacking, not the multiply, sets its time. Here each layer's weight
is reordered once into oneDNN's blocked layout (in the dtype asked for) and the layer computes
through `torch.ops.mkldnn._linear_pointwise` while the context is open: the same products and sums
in the same precision, a different blocking of them. The model object is left as it was after the
call, so other users of the model see torch's own layers.
"""

from __future__ import annotations

import contextlib
import weakref

# nn.Linear -> ((dtype, weight version, weight storage), packed weight, bias in that dtype), per
# module, dropped with it.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def available() -> bool:
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _packed(lin, batch: int, dtype):
    """`lin`'s (packed weight, bias) in `dtype`, or None where oneDNN cannot take it. Rebuilt when
    the weight changes in place (training), so a packed copy is never stale."""
    import torch

    w = lin.weight
    if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16) or w.dim() != 2:
        return None
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None  # oneDNN refuses bf16 weights without AVX512-BW/VL/DQ or AVX-NE-CONVERT (AVX2-only CPUs)
    key = (dtype, w._version, w.data_ptr())
    hit = _PACKED.get(lin)
    if hit is not None and hit[0] == key:
        return hit[1:]
    with torch.inference_mode():
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype), batch)
        bias = None if lin.bias is None else lin.bias.detach().to(dtype)
    _PACKED[lin] = (key, packed, bias)
    return packed, bias


@contextlib.contextmanager
def packed_linears(model_obj, batch: int, dtype=None):
    """While open, `model_obj`'s plain nn.Linear layers compute through oneDNN on packed weights in
    `dtype` (default: each weight's own), inputs cast to it. `batch` is the rows oneDNN tunes the
    layout for (a hint: any row count works). Nothing is swapped where oneDNN is missing."""
    import torch

    swapped = []
    if available():
        for m in model_obj.modules():
            # A forward already set on the instance (accelerate's hooks) is someone else's: kept.
            if type(m) is not torch.nn.Linear or "forward" in m.__dict__:
                continue
            want = dtype or m.weight.dtype
            got = _packed(m, batch, want)
            if got is None:
                continue
            packed, bias = got

            def forward(x, packed=packed, bias=bias, want=want):
                return torch.ops.mkldnn._linear_pointwise(x.to(want), packed, bias, "none", [], "")

            m.forward = forward
            swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward
