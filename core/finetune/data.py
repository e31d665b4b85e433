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
    targets: list[int] = field(default_factory=list)  # label tokens the loss counts (after the shift)
    tokens: int = 0
    label_tokens: int = 0
    available: int = 0  # examples in the data
    exhausted: bool = False  # the budget reached past the end of the data
    skipped: int = 0  # examples with no assistant token left after truncation
    # The held-out examples eval_loss is computed on (never trained on), and why there are none.
    eval_example_ids: list[int] = field(default_factory=list)
    eval_hashes: list[str] = field(default_factory=list)
    eval_ids: list[list[int]] = field(default_factory=list)
    eval_labels: list[list[int]] = field(default_factory=list)
    eval_source: str = ""
    eval_note: str = ""

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.hashes).encode()).hexdigest()

    @property
    def eval_fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.eval_hashes).encode()).hexdigest()


# Below this many examples a default held-out split would starve training; above it 5% is held out.
AUTO_EVAL_MIN_EXAMPLES = 20
AUTO_EVAL_FRACTION = 0.05


def eval_count(n: int, fraction: float | None, cap: int) -> tuple[int, str]:
    """How many of `n` examples to hold out for eval_loss, and a note when none are.

    The note never says "eval_loss": scripts grep `mirage jobs log` for it to see that evaluation ran.
    """
    if fraction is None:
        if n < AUTO_EVAL_MIN_EXAMPLES:
            return 0, (
                f"no held-out evaluation: {n} examples are too few to hold some out by default"
                f" ({AUTO_EVAL_MIN_EXAMPLES} needed); pass --eval-fraction or --eval-data"
            )
        return min(cap, max(2, round(AUTO_EVAL_FRACTION * n))), ""
    if fraction <= 0:
        return 0, "no held-out evaluation: --eval-fraction 0 holds none out"
    k = min(cap, max(1, round(fraction * n)))
    if k >= n:
        raise BadInput("--eval-fraction", f"holding out {k} of {n} examples leaves none to train on")
    return k, ""


def _add_eval(sel: Selection, tok, rows: list[dict], max_length: int) -> None:
    for r in rows:
        ids, labels = encode(tok, r["conversation"], max_length)
        if not any(x != IGNORE for x in labels[1:]):
            continue
        sel.eval_example_ids.append(r["id"])
        sel.eval_hashes.append(r["content_hash"])
        sel.eval_ids.append(ids)
        sel.eval_labels.append(labels)


def shuffled_examples(ws: Workspace, data: str, seed: int) -> list[dict]:
    """All examples of a dataset or subset in ONE seeded order (independent of budget and model)."""
    from core.data.datasets import iter_examples

    rows = sorted(iter_examples(ws, data, columns="id, content_hash, conversation"), key=lambda r: r["id"])
    random.Random(seed).shuffle(rows)
    return rows


def select(
    ws: Workspace,
    data: str,
    budget: int | None,
    seed: int,
    tok,
    max_length: int,
    *,
    eval_fraction: float | None = 0.0,
    eval_data: str | None = None,
    eval_cap: int = 200,
) -> Selection:
    """The prefix of the seeded shuffle whose (trained) tokens fit the budget; budgets nest.

    The held-out split is the END of the same shuffle, taken before the budget, so every budget of
    a sweep is evaluated on the same examples and none of them is trained on. With `eval_data`,
    eval_loss is computed on that dataset instead and its examples are left out of training.
    """
    rows = shuffled_examples(ws, data, seed)
    sel = Selection(available=len(rows))
    if not rows:
        raise BadInput(data, "the dataset has no examples", field="data")
    if eval_data:
        held = shuffled_examples(ws, eval_data, seed)[:eval_cap]
        if not held:
            raise BadInput(eval_data, "the eval dataset has no examples", field="eval_data")
        hashes = {r["content_hash"] for r in held}
        rows = [r for r in rows if r["content_hash"] not in hashes]
        if not rows:
            raise BadInput(data, f"every example is also in the eval data '{eval_data}'", field="eval_data")
        _add_eval(sel, tok, held, max_length)
        sel.eval_source = eval_data
    else:
        k, sel.eval_note = eval_count(len(rows), eval_fraction, eval_cap)
        if k:
            _add_eval(sel, tok, rows[-k:], max_length)
            rows = rows[:-k]
            sel.eval_source = f"{k} held-out examples of {data}"
    if (eval_data or sel.eval_source) and not sel.eval_ids:
        sel.eval_note = "no held-out evaluation: no held-out example has an assistant token within max length"
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
        sel.targets.append(sum(1 for x in labels[1:] if x != IGNORE))
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


def collate(plan, idx: list[int], device, *, held_out: bool = False):
    """Right-padded tensors for one micro-batch of a Plan's selection (or held-out) indices."""
    import torch

    all_ids = plan.sel.eval_ids if held_out else plan.sel.ids
    all_labels = plan.sel.eval_labels if held_out else plan.sel.labels
    width = max(len(all_ids[i]) for i in idx)
    pad = plan.tok.pad_token_id
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    att = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(all_ids[i])
        ids[r, :n] = torch.tensor(all_ids[i])
        labels[r, :n] = torch.tensor(all_labels[i])
        att[r, :n] = 1
    return ids.to(device), att.to(device), labels.to(device)
