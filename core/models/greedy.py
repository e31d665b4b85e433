"""Exact greedy decoding of a local batch that computes the prompts' shared prefix once.

Chat prompts all begin with the same rendered system prompt and instruction, k-shot completion
prompts with the same shots: in a batch of short questions most prompt tokens are that common
prefix (benchmarks/bench_generate.py). HF `generate` runs it again for every row; here its keys and
values are computed once, on one row, and repeated across the batch, and only each row's own
suffix goes through the prefill. The tokens are those of `model.generate(do_sample=False)` on the
same left-padded batch (tests/test_generation.py checks, stop strings and unequal lengths included).
"""

from __future__ import annotations

import inspect

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


def greedy(model_obj, enc, max_new_tokens: int, pad_id, *, tok=None, stops: list[str] | None = None):
    """New tokens for a left-padded batch `enc` (input_ids, attention_mask), laid out as generate
    lays them out: one column per step until every row ends, ended rows filled with `pad_id`.

    A row ends at an EOS token, at a stop string in its new text (decoded with `tok`) or at
    `max_new_tokens`. The cache holds [shared prefix | padding | row's suffix]: the padding is
    masked and the position ids count real tokens only, as generate computes them from the mask.
    """
    import torch

    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = ids.shape[0]
    device = ids.device
    eos = model_obj.generation_config.eos_token_id
    eos_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    eos_ids = torch.tensor(eos_list, dtype=torch.long, device=device)
    pad = int(pad_id if pad_id is not None else (eos_list[0] if eos_list else 0))
    if max_new_tokens <= 0:
        return torch.full((n, 0), pad, dtype=torch.long, device=device)
    cache = _full_attention_cache(model_obj)
    kw = _cache_kwarg(model_obj)
    rows = [ids[i][mask[i].bool()].tolist() for i in range(n)]
    prefix = common_prefix(rows) if n > 1 else 0
    if prefix < MIN_PREFIX:
        prefix = 0
    if prefix:
        # One row's prefix; `batch_repeat_interleave` copies its keys and values to every row.
        model_obj(
            input_ids=ids.new_tensor([rows[0][:prefix]]),
            position_ids=torch.arange(prefix, device=device)[None],
            use_cache=True,
            logits_to_keep=1,
            **{kw: cache},
        )
        cache.batch_repeat_interleave(n)
    width = max(len(r) for r in rows) - prefix
    suffix = torch.full((n, width), pad, dtype=torch.long, device=device)
    suffix_mask = torch.zeros((n, width), dtype=mask.dtype, device=device)
    for i, r in enumerate(rows):
        own = r[prefix:]
        suffix[i, width - len(own) :] = torch.tensor(own, dtype=torch.long)
        suffix_mask[i, width - len(own) :] = 1
    positions = prefix + suffix_mask.long().cumsum(-1) - 1
    positions.masked_fill_(suffix_mask == 0, 0)
    full_mask = torch.cat([mask.new_ones((n, prefix)), suffix_mask], dim=-1)
    logits = model_obj(
        input_ids=suffix,
        attention_mask=full_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{kw: cache},
    ).logits
    last = positions[:, -1:]
    out = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=device)
    # Batch position -> row of `out`. An ended row leaves the batch (its cache, mask and position
    # sliced away): generate keeps feeding it pad tokens until the longest row ends and discards
    # those outputs, here the later steps compute only the rows still writing. Rows' outputs do not
    # depend on each other (their own mask and positions), so the tokens stay generate's.
    alive = torch.arange(n, device=device)
    steps = 0
    for step in range(max_new_tokens):
        nxt = logits[:, -1, :].argmax(-1)
        out[alive, step] = nxt
        steps = step + 1
        ended = torch.isin(nxt, eos_ids) if len(eos_ids) else torch.zeros_like(nxt, dtype=torch.bool)
        if stops:
            texts = tok.batch_decode(out[alive, :steps], skip_special_tokens=True)
            for i, text in enumerate(texts):
                if any(s in text for s in stops):
                    ended[i] = True
        if step + 1 == max_new_tokens or bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, nxt, full_mask, last = alive[keep], nxt[keep], full_mask[keep], last[keep]
        full_mask = torch.cat([full_mask, full_mask.new_ones((len(alive), 1))], dim=-1)
        last = last + 1
        logits = model_obj(
            input_ids=nxt[:, None],
            attention_mask=full_mask,
            position_ids=last,
            use_cache=True,
            **{kw: cache},
        ).logits
    return out[:, :steps]
