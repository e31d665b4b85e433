"""Exact token counts: the base's tokenizer over the rendered training text, cached by content and tokenizer.

mirage has two token counts. Import stores a fast byte heuristic of the content only
(`core.data.ingest.tokens`, `examples.n_tokens`): approximate, and shown as such (`~`,
`tokens_approx`). What a finetune trains on is the conversation rendered with the run's chat
template and tokenized by the base's tokenizer, truncated to `max_length`; the same short QA pair
was 68 tokens by the first and 307 by the second. This module computes the second with the very
code the finetune uses (`core.finetune.data.encode`), so a subset's budget, the budget notes and
`finetune --tokens` read the same number, and keeps each count in `token_counts` keyed by
(example content hash, tokenizer fingerprint), computed only when first asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.finetune.config import FinetuneConfig
from core.finetune.data import IGNORE, encode, load_tokenizer
from core.store.db import select_in
from core.store.workspace import Workspace

# encode() truncates to max_length; the cache keeps the whole rendering, so any max_length reads it.
_NO_LIMIT = 1 << 62


def tokenizer_fingerprint(tok) -> str:
    """What the count depends on: the tokenizer's vocabulary and rules, the chat template, special tokens."""
    h = hashlib.sha256()
    for part in (tok.backend_tokenizer.to_str(), tok.chat_template or "", tok.bos_token or "", tok.eos_token or ""):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def trained_tokens(n_tokens: int, first_label: int | None, max_length: int) -> int:
    """Tokens a finetune with `max_length` trains on for one example (0: it skips the example).

    The rule of `core.finetune.data.select`: the encoding is cut at max_length, and an example with
    no assistant token left is skipped.
    """
    if first_label is None or first_label >= max_length:
        return 0
    return min(n_tokens, max_length)


def measure(tok, conversation: list[dict]) -> tuple[int, int | None]:
    """(tokens of the whole rendering, index of its first trained token or None) for one conversation."""
    ids, labels = encode(tok, conversation, _NO_LIMIT)
    first = next((i for i, x in enumerate(labels) if x != IGNORE), None)
    return len(ids), first


@dataclass
class ExactCounter:
    """The training-text count of a base (with a template and max_length), backed by the cache."""

    ws: Workspace
    base: str
    tok: Any
    template: str  # the template the run would use: "base" or "default"
    max_length: int
    fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.base} (template {self.template}, max_length {self.max_length})"

    def describe(self) -> dict:
        return {
            "base": self.base,
            "template": self.template,
            "max_length": self.max_length,
            "fingerprint": self.fingerprint,
        }

    def measures(self, example_ids: Iterable[int]) -> dict[int, tuple[int, int | None]]:
        """example id -> (whole tokens, first trained token) for these examples; computes what the cache lacks."""
        from core.data.datasets import decode_example

        ids = [int(i) for i in example_ids]
        if not ids:
            return {}
        hashes = dict(select_in(self.ws.db, "select id, content_hash from examples where id in ({in})", ids))
        cached = {
            h: (n, f)
            for h, n, f in select_in(
                self.ws.db,
                "select content_hash, n_tokens, first_label from token_counts where tokenizer = ?"
                " and content_hash in ({in})",
                sorted(set(hashes.values())),
                before=[self.fingerprint],
            )
        }
        missing = sorted({i for i in ids if hashes.get(i) not in cached})
        if missing:
            fresh = []
            for row in select_in(
                self.ws.db,
                "select id, content_hash, conversation, user_text, assistant_text from examples where id in ({in})",
                missing,
            ):
                ex = decode_example(
                    dict(zip(("id", "content_hash", "conversation", "user_text", "assistant_text"), row))
                )
                if ex["content_hash"] in cached:
                    continue
                cached[ex["content_hash"]] = measure(self.tok, ex["conversation"])
                fresh.append((ex["content_hash"], self.fingerprint, *cached[ex["content_hash"]]))
            with self.ws.transaction():
                self.ws.db.conn.executemany(
                    "insert or ignore into token_counts (content_hash, tokenizer, n_tokens, first_label)"
                    " values (?, ?, ?, ?)",
                    fresh,
                )
        return {i: cached[hashes[i]] for i in ids if i in hashes}

    def counts(self, example_ids: Iterable[int]) -> dict[int, int]:
        """example id -> tokens a finetune trains on (0 for an example it would skip)."""
        return {i: trained_tokens(n, f, self.max_length) for i, (n, f) in self.measures(example_ids).items()}


def exact_counter(
    ws: Workspace, base: str, *, template: str | None = None, max_length: int | None = None
) -> ExactCounter:
    """The count `mirage finetune --base BASE` uses, with the run's template and max_length (defaults as a run's)."""
    from core.finetune.trainer import resolve_base

    template = FinetuneConfig.template if template is None else template
    max_length = FinetuneConfig.max_length if max_length is None else int(max_length)
    folder, is_chat = resolve_base(ws, base)
    tok, used = load_tokenizer(folder, template, is_chat)
    return ExactCounter(ws, base, tok, used, max_length, tokenizer_fingerprint(tok))


def dataset_tokens(ws: Workspace, data: str, counter: ExactCounter) -> dict:
    """A dataset's or subset's exact training tokens: what `finetune --data DATA` with no budget trains on."""
    from core.data.datasets import iter_examples

    ids = [r["id"] for r in iter_examples(ws, data, columns="id")]
    counts = counter.counts(ids)
    return {
        "examples": sum(1 for v in counts.values() if v),
        "skipped": sum(1 for v in counts.values() if not v),
        "tokens_exact": sum(counts.values()),
        "tokenizer": counter.name,
    }
