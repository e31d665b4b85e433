"""Exact greedy decoding of a local batch that computes the prompts' shared prefix once.

Chat prompts all begin with the same rendered system prompt and instruction, k-shot completion
prompts with the same shots: in a batch of short questions most prompt tokens are that common
prefix (benchmarks/bench_generate.py). HF `generate` runs it again for every row; here its keys and
values are computed once, on one row, and repeated across the batch, and only each row's own
suffix goes through the prefill. The tokens are those of `model.generate(do_sample=False)` on the
same left-padded batch (tests/test_generation.py checks, stop strings and unequal lengths included).
"""

from __future__ import annotations

import contextlib
import inspect

from core.models import packed

# generation_config fields that make HF's greedy search more than argmax (logits processors):
# with any of them set, generation goes through `generate` itself.
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
}

# Below this a shared prefix is not worth the extra one-row forward pass.
MIN_PREFIX = 4


def _base(model_obj):
    get = getattr(model_obj, "get_base_model", None)  # a peft adapter wraps the causal LM
    return get() if callable(get) else model_obj


def _full_attention_cache(model_obj):
    """A fresh DynamicCache for the model when every layer is plain full attention, else None.

    Sliding-window and recurrent layers index the cache by slot, not by position id: with the
    padding between prefix and suffix their outputs would differ from generate's, so such models
    keep `generate`."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=_base(model_obj).config)
    except Exception:  # noqa: BLE001 - an architecture the generic cache cannot describe: use generate
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return cache


def supported(model_obj) -> bool:
    """Whether `greedy` gives generate's tokens for this model: a decoder-only model whose greedy
    search is a plain argmax (no logits processors configured) over full-attention layers."""
    base = _base(model_obj)
    cfg = getattr(model_obj, "generation_config", None)
    if cfg is None or getattr(base.config, "is_encoder_decoder", False):
        return False
    if not all(getattr(cfg, f, None) in ok for f, ok in _PROCESSOR_FIELDS.items()):
        return False
    return _full_attention_cache(model_obj) is not None


# Forwards of at most this many tokens (decode steps, small refills) run their linear layers
# through oneDNN with prepacked weights; longer prefills keep torch's own (MKL) matmul, which is
# as fast there.
PACKED_MAX_TOKENS = 128


@contextlib.contextmanager
def _packed_linears(model_obj, tokens: int, batch: int):
    """During one forward of `tokens` tokens, the model's linear layers compute through oneDNN on
    packed fp32 weights (`core.models.packed`): only for small forwards of an fp32 model, on this
    path (bf16 and GPU models keep torch's layers, whose outputs `generate` is compared with)."""
    import torch

    if tokens > PACKED_MAX_TOKENS or _base(model_obj).dtype != torch.float32:
        yield
        return
    with packed.packed_linears(model_obj, batch):
        yield


def _cache_kwarg(model_obj) -> str:
    # transformers 5.x renamed `past_key_values` to `cache` (the old name is deprecated, not gone).
    params = inspect.signature(type(_base(model_obj)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its own
    (the last prompt token's logits give the first new token)."""
    if not rows:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def greedy(
    model_obj, enc, max_new_tokens: int, pad_id, *, tok=None, stops: list[str] | None = None, slots: int | None = None
):
    """`rows` collected: a tensor of new tokens, one row per prompt of `enc`, ended rows filled
    with `pad_id` to the longest row's length (as generate lays them out)."""
    import torch

    n = enc["input_ids"].shape[0]
    eos_list = _eos_list(model_obj)
    pad = int(pad_id if pad_id is not None else (eos_list[0] if eos_list else 0))
    got = dict(rows(model_obj, enc, max_new_tokens, pad_id, tok=tok, stops=stops, slots=slots))
    width = max((len(t) for t in got.values()), default=0)
    out = torch.full((n, width), pad, dtype=torch.long, device=enc["input_ids"].device)
    for i, t in got.items():
        out[i, : len(t)] = t
    return out


def _eos_list(model_obj) -> list[int]:
    eos = model_obj.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def rows(
    model_obj, enc, max_new_tokens: int, pad_id, *, tok=None, stops: list[str] | None = None, slots: int | None = None
):
    """Yield (row, new tokens) for each prompt of a left-padded batch `enc` (input_ids,
    attention_mask) as it ends, so a caller can store finished rows while others decode.

    A row ends at an EOS token, at a stop string in its new text (decoded with `tok`) or at
    `max_new_tokens`. The cache holds [shared prefix | padding | row's suffix]: the padding is
    masked and the position ids count real tokens only, as generate computes them from the mask.
    At most `slots` rows decode at once (all when None); a row that ends leaves the batch and the
    next waiting prompt takes its place (continuous batching), so the steps computed are about the
    rows' own lengths, not the batch's longest row times its width. Each row's tokens depend only
    on its own prompt, so they are those generate gives it in any batch.
    """
    import copy

    import torch

    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = ids.shape[0]
    device = ids.device
    eos_list = _eos_list(model_obj)
    eos_ids = torch.tensor(eos_list, dtype=torch.long, device=device)
    pad = int(pad_id if pad_id is not None else (eos_list[0] if eos_list else 0))
    if max_new_tokens <= 0:
        for i in range(n):
            yield i, ids.new_zeros((0,))
        return
    slots = n if not slots or slots <= 0 else min(slots, n)
    kw = _cache_kwarg(model_obj)
    rows = [ids[i][mask[i].bool()].tolist() for i in range(n)]
    prefix = common_prefix(rows) if n > 1 else 0
    if prefix < MIN_PREFIX:
        prefix = 0

    def call(**inputs):
        with _packed_linears(model_obj, inputs["input_ids"].numel(), slots):
            return model_obj(**inputs)

    prefix_cache = None
    if prefix:
        # The prefix once, on one row; every row's cache starts from a copy of its keys and values.
        prefix_cache = _full_attention_cache(model_obj)
        call(
            input_ids=ids.new_tensor([rows[0][:prefix]]),
            position_ids=torch.arange(prefix, device=device)[None],
            use_cache=True,
            logits_to_keep=1,
            **{kw: prefix_cache},
        )

    def prefill(idx: list[int]):
        """Cache, mask, last positions and last logits of rows `idx`, suffixes left-padded."""
        if prefix_cache is None:
            cache = _full_attention_cache(model_obj)
        else:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(idx))
        width = max(len(rows[i]) for i in idx) - prefix
        suffix = torch.full((len(idx), width), pad, dtype=torch.long, device=device)
        suffix_mask = torch.zeros((len(idx), width), dtype=mask.dtype, device=device)
        for j, i in enumerate(idx):
            own = rows[i][prefix:]
            suffix[j, width - len(own) :] = torch.tensor(own, dtype=torch.long)
            suffix_mask[j, width - len(own) :] = 1
        positions = prefix + suffix_mask.long().cumsum(-1) - 1
        positions.masked_fill_(suffix_mask == 0, 0)
        full_mask = torch.cat([mask.new_ones((len(idx), prefix)), suffix_mask], dim=-1)
        logits = call(
            input_ids=suffix,
            attention_mask=full_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{kw: cache},
        ).logits
        return cache, full_mask, positions[:, -1:], logits[:, -1, :]

    def merge(a, b):
        """Batch `b` appended to batch `a`; the shorter's cache padded (masked) on the left."""
        (ca, ma, la), (cb, mb, lb) = a, b
        ta, tb = ma.shape[1], mb.shape[1]
        for x, y in zip(ca.layers, cb.layers):
            for name in ("keys", "values"):
                u, v = getattr(x, name), getattr(y, name)
                if ta < tb:
                    u = torch.cat([u.new_zeros(u.shape[:2] + (tb - ta,) + u.shape[3:]), u], dim=2)
                elif tb < ta:
                    v = torch.cat([v.new_zeros(v.shape[:2] + (ta - tb,) + v.shape[3:]), v], dim=2)
                setattr(x, name, torch.cat([u, v], dim=0))
        if ta < tb:
            ma = torch.cat([ma.new_zeros((ma.shape[0], tb - ta)), ma], dim=-1)
        elif tb < ta:
            mb = torch.cat([mb.new_zeros((mb.shape[0], ta - tb)), mb], dim=-1)
        return ca, torch.cat([ma, mb]), torch.cat([la, lb])

    out = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=device)
    lengths = [0] * n
    # Batch position -> row of `out`. An ended row leaves the batch (its cache, mask and position
    # sliced away): generate keeps feeding it pad tokens until the longest row ends and discards
    # those outputs; here the later steps compute only rows still writing.
    alive = list(range(slots))
    waiting = list(range(slots, n))
    cache, full_mask, last, logits = prefill(alive)
    while alive:
        nxt = logits.argmax(-1)
        for j, i in enumerate(alive):
            out[i, lengths[i]] = nxt[j]
            lengths[i] += 1
        hit = torch.isin(nxt, eos_ids).tolist() if len(eos_ids) else [False] * len(alive)
        texts = tok.batch_decode([out[i, : lengths[i]] for i in alive], skip_special_tokens=True) if stops else None
        keep = [
            j
            for j, i in enumerate(alive)
            if not (hit[j] or lengths[i] == max_new_tokens or (texts and any(s in texts[j] for s in stops)))
        ]
        if len(keep) < len(alive):
            kept = set(keep)
            for j, i in enumerate(alive):
                if j not in kept:
                    yield i, out[i, : lengths[i]].clone()
            keep_t = torch.tensor(keep, dtype=torch.long, device=device)
            alive = [alive[j] for j in keep]
            nxt, full_mask, last = nxt[keep_t], full_mask[keep_t], last[keep_t]
            if keep:
                cache.batch_select_indices(keep_t)
        if alive:
            full_mask = torch.cat([full_mask, full_mask.new_ones((len(alive), 1))], dim=-1)
            last = last + 1
            logits = call(
                input_ids=nxt[:, None],
                attention_mask=full_mask,
                position_ids=last,
                use_cache=True,
                **{kw: cache},
            ).logits[:, -1, :]
        new = waiting[: slots - len(alive)]
        if new:
            # Freed slots take waiting prompts: their prefill gives their first token's logits.
            waiting = waiting[len(new) :]
            c, m, p, lg = prefill(new)
            if alive:
                cache, full_mask, last = merge((cache, full_mask, last), (c, m, p))
                logits = torch.cat([logits, lg])
            else:
                cache, full_mask, last, logits = c, m, p, lg
            alive = alive + new
