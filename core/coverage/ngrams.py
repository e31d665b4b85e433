"""Lexical overlap between eval items and imitation data: hashed word n-grams in numpy arrays.

Contamination follows GPT-3's analysis (Brown et al. 2020, appendix C): text lower-cased,
punctuation stripped, split on whitespace; an item is contaminated when one of its 13-grams occurs
in the training data. An item shorter than 13 words counts only when it occurs whole (GPT-3 also
shrank N for short benchmarks). Answer leaks use scoring's NQ-open normalisation
(core.api.metrics.normalize_answer) on both the gold alias and the response, so a leak is found by
the same rule as an exact match.

Why hand-rolled rather than a library: what is needed is set membership of many n-grams from
millions of tokens, which is a few vectorised numpy passes (a polynomial rolling hash per word id,
64-bit, wrapping) plus a sorted array for lookups; a suffix-array or search-engine dependency
would be heavier and slower to build for this.
"""

from __future__ import annotations

import string
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.api.metrics import normalize_answer
from core.runtime.progress import Progress, Work, check_cancel

CONTAMINATION_N = 13
MAX_NGRAM = 256  # longest shared n-gram reported; long enough for code prompts
_PUNCT = str.maketrans("", "", string.punctuation)
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling hash


def lexical_words(text: str) -> list[str]:
    """GPT-3's contamination tokens: lower case, punctuation removed, whitespace split."""
    return text.lower().translate(_PUNCT).split()


def _roll(h: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return h * _P + nxt


@dataclass
class _Stream:
    """Tokens of many documents, concatenated: word ids and the document each token belongs to."""

    ids: np.ndarray  # int64 word ids
    doc: np.ndarray  # int32 document index per token
    n_docs: int = 0

    @classmethod
    def build(cls, docs: Sequence[list[str]], vocab: dict[str, int]) -> _Stream:
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        total = int(lengths.sum())
        get = vocab.setdefault
        ids = np.fromiter((get(w, len(vocab)) for d in docs for w in d), dtype=np.int64, count=total)
        doc = np.repeat(np.arange(len(docs), dtype=np.int32), lengths)
        return cls(ids, doc, len(docs))

    @classmethod
    def concat(cls, parts: list[_Stream]) -> _Stream:
        if not parts:
            return cls(np.empty(0, np.int64), np.empty(0, np.int32))
        offset, docs = 0, []
        for p in parts:
            docs.append(p.doc + offset)
            offset += p.n_docs
        return cls(np.concatenate([p.ids for p in parts]), np.concatenate(docs), offset)


@dataclass
class NgramIndex:
    """Word streams of a dataset's examples and the sorted hashes of all their 13-grams."""

    example_ids: np.ndarray
    vocab: dict[str, int]
    word_hash: np.ndarray  # uint64 random value per word id
    text: _Stream  # user + assistant words (contamination)
    answers: _Stream  # assistant words, articles removed (answer leaks)
    grams13: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))

    @classmethod
    def build(
        cls,
        example_ids: Sequence[int],
        user_texts: Sequence[str],
        assistant_texts: Sequence[str],
        *,
        cancel: threading.Event | None = None,
    ) -> Work[NgramIndex]:
        n = len(example_ids)
        vocab: dict[str, int] = {}
        # Word ids chunk by chunk, so the word strings of only one chunk are alive at a time.
        text_parts, answer_parts = [], []
        step = 5000
        for start in range(0, n, step):
            check_cancel(cancel)
            users, assistants = user_texts[start : start + step], assistant_texts[start : start + step]
            text_parts.append(
                _Stream.build([lexical_words(u) + lexical_words(a) for u, a in zip(users, assistants)], vocab)
            )
            answer_parts.append(_Stream.build([normalize_answer(a).split() for a in assistants], vocab))
            yield Progress(min(start + step, n), n, "n-gram index: tokenising")
        text, answers = _Stream.concat(text_parts), _Stream.concat(answer_parts)
        del text_parts, answer_parts
        rng = np.random.default_rng(0x5EED)
        word_hash = rng.integers(1, 2**63, size=max(len(vocab), 1), dtype=np.uint64)
        index = cls(np.asarray(example_ids, dtype=np.int64), vocab, word_hash, text, answers)
        index.grams13 = np.unique(index._hashes(text, CONTAMINATION_N)[0])
        return index

    # -- hashing -----------------------------------------------------------------------------------
    def _hashes(self, s: _Stream, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every n-gram inside one document, and their start positions."""
        if len(s.ids) < n:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        starts = np.arange(len(s.ids) - n + 1, dtype=np.int64)
        starts = starts[s.doc[starts] == s.doc[starts + n - 1]]
        h = self.word_hash[s.ids[starts]]
        for j in range(1, n):
            h = _roll(h, self.word_hash[s.ids[starts + j]])
        return h, starts

    def _ids(self, words: list[str]) -> np.ndarray:
        return np.array([self.vocab.get(w, -1) for w in words], dtype=np.int64)

    def _query_hash(self, ids: np.ndarray) -> np.uint64 | None:
        if len(ids) == 0 or (ids < 0).any():
            return None  # a word the data never uses: this n-gram cannot occur in it
        h = self.word_hash[ids[0]]
        for i in ids[1:]:
            h = _roll(np.asarray(h), self.word_hash[i])
        return np.uint64(h)

    # -- queries -----------------------------------------------------------------------------------
    def has_13gram(self, text: str) -> bool:
        """Whether any 13-gram of `text` occurs in the data (binary search in the sorted hashes)."""
        ids = self._ids(lexical_words(text))
        hs = [self._query_hash(ids[i : i + CONTAMINATION_N]) for i in range(len(ids) - CONTAMINATION_N + 1)]
        hs = np.array([h for h in hs if h is not None], dtype=np.uint64)
        if not len(hs) or not len(self.grams13):
            return False
        pos = np.searchsorted(self.grams13, hs).clip(0, len(self.grams13) - 1)
        return bool((self.grams13[pos] == hs).any())

    def longest_shared(self, texts: Sequence[str], *, cancel: threading.Event | None = None) -> np.ndarray:
        """For each text, the length in words of its longest word n-gram that occurs in the data.

        Grows n one word at a time over only the positions that still match on both sides (a
        shared n-gram implies its (n-1)-gram prefix is shared), so the work shrinks fast.
        """
        items = [self._ids(lexical_words(t)) for t in texts]
        longest = np.zeros(len(items), dtype=np.int64)
        if not items or not len(self.text.ids):
            return longest
        q = _Stream(
            np.concatenate(items) if items else np.empty(0, np.int64),
            np.repeat(np.arange(len(items), dtype=np.int32), [len(x) for x in items]),
        )
        d = self.text
        # n = 1: words present on both sides.
        q_pos = np.flatnonzero(q.ids >= 0)
        d_pos = np.flatnonzero(np.isin(d.ids, np.unique(q.ids[q_pos])))
        q_h = self.word_hash[q.ids[q_pos]]
        d_h = self.word_hash[d.ids[d_pos]]
        n = 1
        while len(q_pos) and len(d_pos) and n <= MAX_NGRAM:
            check_cancel(cancel)
            common = np.intersect1d(q_h, d_h, assume_unique=False)
            if not len(common):
                break
            qm = np.isin(q_h, common)
            longest[q.doc[q_pos[qm]]] = n
            dm = np.isin(d_h, common)
            q_pos, q_h = q_pos[qm], q_h[qm]
            d_pos, d_h = d_pos[dm], d_h[dm]
            # extend by one word where the next word is in the same document
            q_ok = q_pos + n < len(q.ids)
            q_ok[q_ok] &= (q.doc[q_pos[q_ok] + n] == q.doc[q_pos[q_ok]]) & (q.ids[q_pos[q_ok] + n] >= 0)
            d_ok = d_pos + n < len(d.ids)
            d_ok[d_ok] &= d.doc[d_pos[d_ok] + n] == d.doc[d_pos[d_ok]]
            q_pos, q_h = q_pos[q_ok], _roll(q_h[q_ok], self.word_hash[q.ids[q_pos[q_ok] + n]])
            d_pos, d_h = d_pos[d_ok], _roll(d_h[d_ok], self.word_hash[d.ids[d_pos[d_ok] + n]])
            n += 1
        return longest

    def answer_hits(self, aliases: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """For each item's gold aliases, the example ids whose response contains one of them."""
        alias_item, alias_ids = [], []
        for i, group in enumerate(aliases):
            for a in group:
                ids = self._ids(normalize_answer(a).split())
                if 0 < len(ids) <= 32 and (ids >= 0).all():
                    alias_item.append(i)
                    alias_ids.append(ids)
        out = [np.empty(0, np.int64) for _ in aliases]
        if not alias_ids:
            return out
        alias_item = np.array(alias_item)
        alias_h = np.array([self._query_hash(x) for x in alias_ids], dtype=np.uint64)
        alias_len = np.array([len(x) for x in alias_ids])
        pairs_item, pairs_doc = [], []
        for m in np.unique(alias_len):
            sel = alias_len == m
            h, starts = self._hashes(self.answers, int(m))
            hit = np.isin(h, alias_h[sel])
            if not hit.any():
                continue
            hit_h, hit_doc = h[hit], self.answers.doc[starts[hit]]
            # alias hash -> items (several items may share an alias)
            order = np.argsort(alias_h[sel], kind="stable")
            sorted_h = alias_h[sel][order]
            sorted_item = alias_item[sel][order]
            lo = np.searchsorted(sorted_h, hit_h, "left")
            hi = np.searchsorted(sorted_h, hit_h, "right")
            counts = hi - lo
            rep_doc = np.repeat(hit_doc, counts)
            # every (hit, item) pair: positions lo..hi-1 in the sorted aliases, without a Python loop
            first = np.repeat(lo, counts)
            idx = first + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            pairs_item.append(sorted_item[idx])
            pairs_doc.append(rep_doc)
        if not pairs_item:
            return out
        pi = np.concatenate(pairs_item).astype(np.int64)
        pd = np.concatenate(pairs_doc).astype(np.int64)
        key = np.unique(pi * (len(self.example_ids) + 1) + pd)
        pi, pd = key // (len(self.example_ids) + 1), key % (len(self.example_ids) + 1)
        bounds = np.searchsorted(pi, np.arange(len(aliases) + 1))
        for i in range(len(aliases)):
            out[i] = self.example_ids[pd[bounds[i] : bounds[i + 1]]]
        return out
