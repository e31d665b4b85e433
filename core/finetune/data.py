"""Training data for a finetune: the chat template, assistant-only labels, budget selection, batches.

A run's data is a prefix of ONE seeded shuffle of the dataset or subset, so token budgets nest: the
0.3M-token run trains on a subset of the 1.5M-token run's examples. Labels cover the assistant
replies only (system, user and template tokens are IGNORE).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import BadInput, ModelError
from core.store.workspace import Workspace

IGNORE = -100

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


def collate(plan, idx: list[int], device):
    """Right-padded tensors for one micro-batch of a Plan's selection indices."""
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
