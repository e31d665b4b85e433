"""Importers: imitation data, evaluation suites and recorded outputs, streamed into the workspace.

Every importer is a generator that yields `Progress` and returns a summary dict. Files are read
record by record (JSONL lines, JSON-array items through ijson, CSV rows, Parquet / `datasets`
batches) and written in batches, so memory does not grow with the file.

All-or-nothing without holding the write lock for the whole import: rows are written in short
transactions under a *staging* row (a `datasets` / `suites` row with status 'importing' and a
private name) that every reader ignores. At the end one short transaction makes them visible
(renames the staging row, or for an append moves its rows onto the existing one). On any failure
the staging row and its rows are deleted. A crash leaves a staging row whose process is gone; the
next import removes it. Readers never see a half-imported file.

Full-text index: the FTS triggers skip staged rows (a trigger per row made FTS5 flush per row and
the import ~7x slower; m011_ingest_fts_bulk). A suite's items are indexed chunk by chunk by one
bulk `insert ... select` in the chunk's own transaction. A dataset's examples are published with
their ids in `fts_backlog` and indexed by core.search after the import (m060_ingest_fts_backlog):
tokenising the text was the import's largest cost, and nothing needs the index until a search,
which finishes the backlog first.

Pipeline of a data import (`_ExampleSink`), each stage a chunk apart: the main thread reads (hashing
the file as it goes), parses and normalises; a second thread counts tokens (numpy, mostly without
the GIL) and hashes the rows; a third writes them, one multi-row statement per chunk (SQLite runs
without the GIL). On 2 cores the parser is the critical path and every stage's time under the GIL
is its time too. `python benchmarks/bench_import.py --ablations ...` times the import with one of
these measures undone; _bulk_writes lists the settings an import changes while it runs.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.datasets import pack_conversation
from core.errors import BadInput, Cancelled, ConfigError
from core.runtime.processes import process_alive
from core.runtime.progress import Progress, Work, check_cancel
from core.store.workspace import Workspace, dumps, now

DATA_FORMATS = ("sharegpt", "alpaca", "messages")
SUITE_FORMATS = ("qa", "mc", "code", "prompts")
BATCH = 1000  # rows per insert transaction: short lock holds; 2000 (ablation batch_2000) was no faster and peaked 216 MB higher
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a record (line) larger than this is bad input, not data
LETTERS = "ABCDEFGHIJ"

_ROLE_FROM = {  # ShareGPT `from` values seen in the wild -> chat roles
    "human": "user",
    "user": "user",
    "prompter": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "claude": "assistant",
    "gpt-4": "assistant",
    "system": "system",
}
_ROLE_MESSAGES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


# -- errors with a place ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loc:
    """Where a record sits in its file: a JSONL/CSV line, a JSON-array item, a Parquet/dataset row."""

    unit: str  # line | item | row
    n: int


def bad(path, reason: str, loc: Loc | None = None, field: str | None = None) -> BadInput:
    """BadInput naming the file, the record and the field: `f.jsonl:12: field 'x': reason`."""
    if loc is None or loc.unit == "line":
        return BadInput(path, reason, line=loc.n if loc else None, field=field)
    e = BadInput(f"{path}: {loc.unit} {loc.n}", reason, field=field)
    e.path, e.line = str(path), loc.n
    return e


class _FieldError(Exception):
    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _str(rec: dict, key: str, *, required: bool = True, field: str | None = None) -> str | None:
    v = rec.get(key)
    if v is None:
        if required:
            raise _FieldError(field or key, "missing")
        return None
    if not isinstance(v, str):
        raise _FieldError(field or key, f"expected a string, got {_type(v)}")
    return v


def _type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


# -- reading files ------------------------------------------------------------------------------------
class _HashingReader(io.RawIOBase):
    """Raw file reads that also feed a sha256, so a file's identity costs no second pass."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.pos = 0

    def readable(self):
        return True

    def readinto(self, b):
        n = self.raw.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.pos += n
        return n

    def close(self):
        self.raw.close()
        super().close()


class Source:
    """One input (file or `datasets` folder): its kind, size, read position and content digest."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.label = str(path)
        if not self.path.exists():
            raise BadInput(self.label, "no such file")
        self.is_dir = self.path.is_dir()
        if self.is_dir:
            if not (self.path / "dataset_info.json").exists() and not (self.path / "dataset_dict.json").exists():
                raise BadInput(
                    self.label,
                    "a folder, but not a `datasets` save_to_disk folder (no dataset_info.json or dataset_dict.json)",
                )
            self.size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        else:
            self.size = self.path.stat().st_size
        self._hashing: _HashingReader | None = None
        self._digest: str | None = None

    # The byte position drives the progress bar (for .gz: compressed bytes read).
    @property
    def pos(self) -> int:
        return self._hashing.pos if self._hashing else 0

    def digest(self) -> str:
        if self._digest is None:
            if self._hashing is not None:
                # finish hashing whatever the reader did not consume (trailing bytes)
                sha = self._hashing.sha
                with open(self.path, "rb") as fh:
                    fh.seek(self._hashing.pos)
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        sha.update(chunk)
                self._digest = sha.hexdigest()
            else:
                h = hashlib.sha256()
                files = sorted(f for f in self.path.rglob("*") if f.is_file()) if self.is_dir else [self.path]
                for f in files:
                    h.update(str(f.relative_to(self.path) if self.is_dir else f.name).encode())
                    with open(f, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
                self._digest = h.hexdigest()
        return self._digest

    def open_binary(self):
        """A buffered binary stream of the (decompressed) content; gzip found by its magic bytes."""
        raw = open(self.path, "rb")
        self._hashing = _HashingReader(raw)
        buffered = io.BufferedReader(self._hashing, 1 << 20)
        if buffered.peek(2)[:2] == b"\x1f\x8b":
            return io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"), 1 << 20)
        return buffered

    def kind(self) -> str:
        """jsonl | json | csv | parquet | txt | dataset, from the extension and then the content."""
        if self.is_dir:
            return "dataset"
        name = self.path.name.lower()
        if name.endswith(".gz"):
            name = name[:-3]
        ext = name.rsplit(".", 1)[-1] if "." in name else ""
        if ext in ("csv", "tsv"):
            return "csv"
        if ext in ("parquet", "pq"):
            return "parquet"
        if ext == "txt":
            return "txt"
        # JSON or JSONL: the first non-blank character decides ('[' = one array, '{' = lines).
        with self.open_binary() as f:
            head = f.peek(4096)[:4096]
        self._hashing = None
        head = head.lstrip(b"\xef\xbb\xbf").lstrip()
        if head[:1] == b"[":
            return "json"
        if head[:1] == b"{":
            return "jsonl"
        if not head:
            raise BadInput(self.label, "empty file")
        if ext in ("json", "jsonl", "ndjson"):
            raise bad(self.label, "malformed JSON (expected '[' or '{' at the start)", Loc("line", 1))
        raise BadInput(
            self.label,
            "unknown file type (expected .jsonl, .json, .csv, .parquet, .txt, .gz of those, or a `datasets` folder)",
        )


def _json_reason(raw: bytes, e: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        return f"not valid UTF-8 (byte 0x{raw[u.start]:02x} at column {u.start + 1})"
    # Only the column: the parser's own wording changes between orjson versions.
    col = getattr(e, "colno", None)
    return f"malformed JSON at column {col}" if col else "malformed JSON"


def _too_long(n: int | None = None) -> str:
    limit = f"the {MAX_RECORD_BYTES // (1024 * 1024)} MB limit for one record"
    return f"{n / (1024 * 1024):.0f} MB is over {limit}" if n else f"over {limit}"


def read_records(src: Source, kind: str) -> Iterator[tuple[Loc, Any]]:
    """Yield (where, record) per record; a record that cannot be read comes as a BadInput value
    (the caller skips or raises it). Errors that leave no way to find the next record raise."""
    if kind == "jsonl":
        yield from _read_jsonl(src)
    elif kind == "json":
        yield from _read_json_array(src)
    elif kind == "csv":
        yield from _read_csv(src)
    elif kind == "parquet":
        yield from _read_parquet(src)
    elif kind == "dataset":
        yield from _read_dataset_folder(src)
    elif kind == "txt":
        yield from _read_txt(src)
    else:  # pragma: no cover - kinds come from Source.kind
        raise BadInput(src.label, f"unknown file type '{kind}'")


_BLANK_START = (b"", b" ", b"\t", b"\r", b"\n", b"\x0b", b"\x0c")


def _read_jsonl(src: Source):
    import orjson  # 3-5x faster than json.loads; this loop is the import's hot path

    with src.open_binary() as f:
        n = 0
        while True:
            line = f.readline(MAX_RECORD_BYTES + 1)
            if not line:
                break
            n += 1
            if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
                size = len(line)
                while True:  # skip the rest of the line without ever holding it
                    chunk = f.readline(1 << 20)
                    size += len(chunk)
                    if not chunk or chunk.endswith(b"\n"):
                        break
                yield Loc("line", n), bad(src.label, _too_long(size), Loc("line", n))
                continue
            if n == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line[:1] in _BLANK_START and not line.strip():  # a record starts with '{' or '['
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                yield Loc("line", n), bad(src.label, _json_reason(line, e), Loc("line", n))
                continue
            yield Loc("line", n), obj


def _read_json_array(src: Source):
    # ijson (yajl2_c backend) streams the array item by item; `json.load` would hold it all.
    import ijson

    n = 0
    with src.open_binary() as f:
        if f.peek(3)[:3] == b"\xef\xbb\xbf":
            f.read(3)
        it = ijson.items(f, "item", use_float=True)
        while True:
            try:
                obj = next(it)
            except StopIteration:
                break
            except ijson.JSONError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                reason = (
                    "not valid UTF-8"
                    if "utf8" in first.lower() or "utf-8" in first.lower()
                    else f"malformed JSON ({first})"
                )
                # Inside one array nothing tells where the next item starts: this is fatal.
                raise bad(src.label, f"{reason} after item {n}" if n else reason, Loc("item", n + 1)) from None
            except UnicodeDecodeError:
                raise bad(src.label, "not valid UTF-8", Loc("item", n + 1)) from None
            n += 1
            yield Loc("item", n), obj


def _read_csv(src: Source):
    csv.field_size_limit(MAX_RECORD_BYTES)
    with src.open_binary() as fb:
        # surrogateescape keeps going past bad bytes so the row and field can be named below
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        delim = "\t" if src.path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
        reader = csv.reader(text, delimiter=delim)
        header: list[str] | None = None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                msg = str(e)
                reason = _too_long() if "field larger" in msg else f"malformed CSV ({msg})"
                raise bad(src.label, reason, Loc("line", reader.line_num)) from None
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                # MMLU's CSVs have no header: question, A, B, C, D, answer
                if len(header) == 6 and not {"question", "prompt", "instruction"} & {h.lower() for h in header}:
                    header = ["question", "A", "B", "C", "D", "answer"]
                else:
                    continue
            rec: dict = {}
            for i, cell in enumerate(row):
                key = header[i] if i < len(header) else f"column {i + 1}"
                try:
                    cell.encode("utf-8")
                except UnicodeEncodeError as u:
                    bad_byte = ord(cell[u.start]) - 0xDC00
                    yield (
                        Loc("line", line),
                        bad(src.label, f"not valid UTF-8 (byte 0x{bad_byte:02x})", Loc("line", line), key),
                    )
                    break
                rec[key] = cell
            else:
                yield Loc("line", line), rec


def _read_parquet(src: Source):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with a readable message
        raise BadInput(src.label, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=BATCH):
        for rec in batch.to_pylist():
            n += 1
            yield Loc("row", n), rec
        src._parquet_pos = int(src.size * n / max(pf.metadata.num_rows, 1))


def _read_dataset_folder(src: Source):
    import datasets

    try:
        ds = datasets.load_from_disk(str(src.path))
    except Exception as e:
        raise BadInput(src.label, f"not a readable `datasets` folder ({str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if len(splits) == 1 or "train" in splits:
            ds = ds[splits[0] if len(splits) == 1 else "train"]
        else:
            raise BadInput(src.label, f"has splits {', '.join(splits)}; import one: {src.label}/SPLIT")
    n = 0
    total = len(ds)
    for batch in ds.iter(batch_size=BATCH):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            n += 1
            yield Loc("row", n), dict(zip(keys, values))
        src._parquet_pos = int(src.size * n / max(total, 1))


def _read_txt(src: Source):
    with src.open_binary() as f:
        n = 0
        for raw in f:
            n += 1
            if len(raw) > MAX_RECORD_BYTES:
                yield Loc("line", n), bad(src.label, _too_long(len(raw)), Loc("line", n))
                continue
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
            except UnicodeDecodeError as u:
                yield (
                    Loc("line", n),
                    bad(
                        src.label,
                        f"not valid UTF-8 (byte 0x{raw[u.start]:02x} at column {u.start + 1})",
                        Loc("line", n),
                    ),
                )
                continue
            if text.strip():
                yield Loc("line", n), {"prompt": text}


def _position(src: Source) -> int:
    return getattr(src, "_parquet_pos", None) or src.pos


# -- token counting ------------------------------------------------------------------------------------
class TokenCounter:
    """Counts tokens of many texts at once: the built-in approximate counter, or a real tokenizer.

    Built-in (config `defaults.tokenizer = ""`): a vectorised byte scan that counts what a BPE
    tokenizer splits text into: each run of letters/digits (one token per 8 bytes of it), each
    punctuation mark or newline, each 3-4 byte UTF-8 character (CJK, emoji). Against the SmolLM2
    BPE tokenizer it came within 0-4% in total on NQ questions, GPTeacher code, HumanEval and
    AlpacaEval text (~8% off per text). The `tokenizers` library on the same text was ~40x slower
    here (encode_batch, 2 shared cores) than a first version of this scan, itself 5x slower than
    this one - far too slow to keep an import within 2x of `datasets.load_dataset`; a per-text
    regex (`re.findall`) was ~4x slower than that first version.
    Set `defaults.tokenizer` to a tokenizer.json (or a folder holding one) for exact counts.
    """

    RUN = 8  # bytes of a letters/digits run per token
    LEVELS = 4  # runs up to 8*LEVELS bytes are counted by shifted ANDs, longer ones from their spans

    def __init__(self, spec: str = ""):
        self.spec = spec
        self._tok = None
        if spec:
            p = Path(spec).expanduser()
            f = p / "tokenizer.json" if p.is_dir() else p
            if not f.is_file():
                raise ConfigError(f"defaults.tokenizer: no tokenizer.json at {f}")
            from tokenizers import Tokenizer

            try:
                self._tok = Tokenizer.from_file(str(f))
            except Exception as e:
                raise ConfigError(f"defaults.tokenizer: {f}: {str(e).splitlines()[0]}") from None
        else:
            classes = bytearray(256)  # 0 space, 1 word byte, 2 one-byte token, 3 wide char
            for b in range(256):
                c = chr(b)
                if 0xE0 <= b < 0xF8:
                    classes[b] = 3
                elif b >= 0x80 or c.isalnum() or c == "_":
                    classes[b] = 1
                elif c in " \t\r\x00\x0b\x0c":
                    classes[b] = 0
                else:
                    classes[b] = 2
            self._classes = bytes(classes)  # a bytes.translate table: one C pass, no numpy gather

    @property
    def name(self) -> str:
        return self.spec or "builtin"

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self._tok is not None:
            return [len(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        return _count_builtin(texts, self._classes, self.RUN, self.LEVELS)


def _count_builtin(texts: list[str], classes: bytes, run: int, levels: int) -> list[int]:
    """The built-in count of each text (see TokenCounter), one vectorised pass over all of them.

    The texts are joined with a NUL (class 0) after each and classified byte by byte; the word
    and one-byte-token masks are then packed 64 bytes to a uint64, so the run arithmetic (run
    starts; runs of 8k+1 bytes or more, by shifted ANDs) touches an eighth of the memory. Each
    token's first byte is a set bit; a text's count is the set bits in its span (a prefix sum of
    per-word popcounts). For 1,000 ShareGPT conversations this took ~0.7x the time of the same
    scan on one byte per position.
    """
    import numpy as np

    if all(t.isascii() for t in texts):  # O(1) each; then bytes = characters, one encode
        raw = ("\x00".join(texts) + "\x00").encode("ascii")
        lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))
    else:
        enc = [t.encode("utf-8", "surrogatepass") for t in texts]
        raw = b"\x00".join(enc) + b"\x00"
        lengths = np.fromiter((len(e) + 1 for e in enc), dtype=np.int64, count=len(enc))
    bounds = np.zeros(len(texts) + 1, dtype=np.int64)  # text i is bits [bounds[i], bounds[i+1])
    np.cumsum(lengths, out=bounds[1:])
    cls = np.frombuffer(raw.translate(classes), dtype=np.uint8)
    word = _pack64(cls == 1)
    tok = _pack64(cls >= 2)  # punctuation, newlines, wide characters
    tok |= word & ~_behind(word, 1)  # a run's first byte
    # wk: bit j set when bytes j..j+8k are all word bytes (k = level): 2, 4, 8, then 9
    wk = word & _ahead(word, 1)
    wk &= _ahead(wk, 2)
    wk &= _ahead(wk, 4)
    wk &= _ahead(word, run)
    extra = None
    level = 1
    while wk.any():
        if level > levels:
            # Rare (URLs, base64): runs longer than run*levels bytes, counted from the spans where
            # wk holds, [s, s + L - run*levels), as the tokens they still owe.
            bits = np.unpackbits(wk.astype(">u8").view(np.uint8)).view(np.int8)
            edges = np.diff(bits, prepend=np.int8(0), append=np.int8(0))
            rise, fall = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            owed = np.zeros(len(rise) + 1, dtype=np.int64)
            np.cumsum((fall - rise + run - 1) // run, out=owed[1:])
            extra = np.diff(owed[np.searchsorted(rise, bounds)])
            break
        tok |= _behind(wk & ~_behind(wk, 1), run * level)  # a run of 8k+1+ bytes owes a token at +8k
        wk &= _ahead(wk, run)
        level += 1
    before = np.zeros(len(tok) + 1, dtype=np.int64)  # set bits before each uint64
    np.cumsum(np.bitwise_count(tok), out=before[1:])
    at = bounds >> 6
    partial = tok[at] & ~(np.uint64(0xFFFFFFFFFFFFFFFF) >> (bounds & 63).astype(np.uint64))
    counts = np.diff(before[at] + np.bitwise_count(partial))
    if extra is not None:
        counts += extra
    return counts.tolist()


def _pack64(mask):
    """A bool array as uint64 words, first byte in the top bit, with one spare zero word at the end."""
    import numpy as np

    packed = np.packbits(mask)
    packed = np.concatenate([packed, np.zeros(8 + (-len(packed)) % 8, dtype=np.uint8)])
    return packed.view(">u8").astype(np.uint64)


def _ahead(x, k: int):
    """Bit i of the result is bit i+k of x (0 < k < 64)."""
    import numpy as np

    y = x << np.uint64(k)
    y[:-1] |= x[1:] >> np.uint64(64 - k)
    return y


def _behind(x, k: int):
    """Bit i of the result is bit i-k of x (0 < k < 64)."""
    import numpy as np

    y = x >> np.uint64(k)
    y[1:] |= x[:-1] << np.uint64(64 - k)
    return y


def token_counter(ws: Workspace) -> TokenCounter:
    return TokenCounter(ws.config.defaults.tokenizer)


# -- imitation data: normalising records to conversations ----------------------------------------------
def detect_data_format(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and ("output" in rec or "response" in rec):
        return "alpaca"
    return None


def _turns_sharegpt(rec: dict) -> list[dict]:
    conv = rec.get("conversations")
    if type(conv) is list:
        # The common case in one tight loop (this runs per record on the import's critical path);
        # anything unusual falls through to the careful loop below, which names the bad field.
        try:
            out = []
            for t in conv:
                value = t["value"]
                if type(value) is not str:
                    raise TypeError
                out.append({"role": _ROLE_FROM[t["from"].lower()], "content": value})
            return out
        except (KeyError, TypeError, AttributeError):
            pass
    if conv is None:
        raise _FieldError("conversations", "missing")
    if not isinstance(conv, list):
        raise _FieldError("conversations", f"expected a list of turns, got {_type(conv)}")
    out = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            raise _FieldError(f"conversations[{i}]", f"expected an object, got {_type(t)}")
        who = t.get("from", t.get("role"))
        if not isinstance(who, str):
            raise _FieldError(
                f"conversations[{i}].from", "missing" if who is None else f"expected a string, got {_type(who)}"
            )
        role = _ROLE_FROM.get(who.lower())
        if role is None:
            raise _FieldError(f"conversations[{i}].from", f"unknown speaker '{who}' (expected human, gpt or system)")
        value = t.get("value", t.get("content"))
        if not isinstance(value, str):
            raise _FieldError(
                f"conversations[{i}].value", "missing" if value is None else f"expected a string, got {_type(value)}"
            )
        out.append({"role": role, "content": value})
    return out


def _content(value, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text ones
        parts = []
        for j, p in enumerate(value):
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
            else:
                raise _FieldError(f"{field}[{j}]", "expected a text part")
        return "".join(parts)
    raise _FieldError(field, "missing" if value is None else f"expected a string, got {_type(value)}")


def _turns_messages(rec: dict) -> list[dict]:
    msgs = rec.get("messages")
    if msgs is None:
        raise _FieldError("messages", "missing")
    if not isinstance(msgs, list):
        raise _FieldError("messages", f"expected a list of messages, got {_type(msgs)}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _FieldError(f"messages[{i}]", f"expected an object, got {_type(m)}")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLE_MESSAGES:
            raise _FieldError(
                f"messages[{i}].role",
                "missing" if role is None else f"unknown role '{role}' (expected system, user or assistant)",
            )
        out.append({"role": _ROLE_MESSAGES[role], "content": _content(m.get("content"), f"messages[{i}].content")})
    return out


def _turns_alpaca(rec: dict) -> list[dict]:
    instruction = _str(rec, "instruction")
    extra = _str(rec, "input", required=False)
    if "output" not in rec and "response" not in rec:
        raise _FieldError("output", "missing (expected output or response)")
    output = _str(rec, "output" if "output" in rec else "response")
    system = _str(rec, "system", required=False)
    user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


_NORMALISERS: dict[str, Callable[[dict], list[dict]]] = {
    "sharegpt": _turns_sharegpt,
    "messages": _turns_messages,
    "alpaca": _turns_alpaca,
}


def normalise_conversation(rec: Any, fmt: str) -> list[dict]:
    """The record as [{role, content}]; raises _FieldError naming the field that is wrong."""
    if not isinstance(rec, dict):
        raise _FieldError(None, f"expected an object, got {_type(rec)}")
    turns = _NORMALISERS[fmt](rec)
    spoken = [t["role"] for t in turns if t["content"].strip()]
    if not spoken:
        raise _FieldError(_conv_field(fmt), "empty conversation")
    if "assistant" not in spoken:
        raise _FieldError(_conv_field(fmt), "no assistant turn")
    if "user" not in spoken:
        raise _FieldError(_conv_field(fmt), "no user turn")
    return turns


def _conv_field(fmt: str) -> str:
    return {"sharegpt": "conversations", "messages": "messages", "alpaca": "output"}[fmt]


# -- staging: all-or-nothing without a long write lock --------------------------------------------------
_CHILD = {  # staging parent table -> (child table, foreign key, indexed text columns)
    "datasets": ("examples", "dataset_id", ("user_text", "assistant_text")),
    "suites": ("items", "suite_id", ("prompt",)),
}


def _drop_staged(ws: Workspace, table: str, stage_id: int) -> None:
    # The parent still says 'importing', so the FTS delete trigger stays quiet: remove the rows'
    # index entries in bulk first, then the rows, then the parent.
    child, fk, cols = _CHILD[table]
    col_list = ", ".join(cols)
    with ws.transaction():
        if child == "examples":  # never indexed while staged; an older version's rows were queued by m060
            ws.db.execute(
                "delete from fts_backlog where example_id in (select id from examples where dataset_id = ?)", [stage_id]
            )
        else:
            ws.db.execute(
                f"insert into {child}_fts({child}_fts, rowid, {col_list}) select 'delete', id, {col_list}"
                f" from {child} where {fk} = ?",
                [stage_id],
            )
        ws.db.execute(f"delete from {child} where {fk} = ?", [stage_id])
        ws.db.execute(f"delete from {table} where id = ? and status = 'importing'", [stage_id])


def _insert_indexed(ws: Workspace, table: str, stage_id: int, sql: str, rows: list[tuple]) -> int:
    """Insert a chunk of staged rows and (items) index them in bulk, in one transaction; returns rows added.

    Examples are indexed after publishing (core.search.index_backlog)."""
    child, fk, cols = _CHILD[table]
    col_list = ", ".join(cols)
    with ws.transaction():
        (last,) = ws.db.execute(f"select coalesce(max(id), 0) from {child}").fetchone()
        inserted = _insert_rows(ws.db.conn, sql, rows)
        if inserted and child != "examples":
            ws.db.execute(
                f"insert into {child}_fts(rowid, {col_list}) select id, {col_list} from {child}"
                f" where {fk} = ? and id > ?",
                [stage_id, last],
            )
    return inserted


def _insert_rows(conn, sql: str, rows: list[tuple]) -> int:
    """Run `insert ... values (?, ...)` for `rows` as few multi-row statements; returns rows added.

    Not executemany: that steps once per row, and each step gives up the GIL and must win it back
    from the parsing thread (up to the 5 ms switch interval each time). One statement per chunk
    gives it up once: `bench_import.py --ablations executemany` took 1.55x as long (5 runs).
    """
    if not rows:
        return 0
    head, one = sql.rsplit(" values ", 1)
    width = len(rows[0])
    per = max(1, min(len(rows), conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    added = 0
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        params = [v for row in part for v in row]
        added += conn.execute(f"{head} values {','.join([one] * len(part))}", params).rowcount
    return added


@contextlib.contextmanager
def _bulk_writes(ws: Workspace):
    """Settings for a large import, restored after it. Without them the 100k import took 1.32x as
    long (`benchmarks/bench_import.py --ablations no_bulk_settings`, 5 runs).

    - a 64 MB page cache: each chunk's rows land at random places in the content-hash index, and
      with the default 2 MB cache those index pages were evicted and read back, chunk after chunk;
    - a WAL checkpoint every ~40 MB instead of every ~4 MB (one per chunk);
    - temporary tables in memory: a multi-row insert into a table with row triggers (the FTS ones)
      goes through a temporary table, which was a temp file: ~0.5 GB more written per 100k rows;
    - a 1 ms GIL switch interval instead of 5: the counter and the writer give the GIL up around
      every numpy call and SQLite statement and then wait for the parsing thread to hand it back.
    """
    conn = ws.db.conn
    (cache,) = conn.execute("pragma cache_size").fetchone()
    (checkpoint,) = conn.execute("pragma wal_autocheckpoint").fetchone()
    (temp_store,) = conn.execute("pragma temp_store").fetchone()
    switch = sys.getswitchinterval()
    conn.execute("pragma cache_size = -65536")
    conn.execute("pragma wal_autocheckpoint = 10000")
    conn.execute("pragma temp_store = memory")
    sys.setswitchinterval(min(switch, 0.001))
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        conn.execute(f"pragma temp_store = {int(temp_store)}")
        conn.execute(f"pragma wal_autocheckpoint = {int(checkpoint)}")
        conn.execute(f"pragma cache_size = {int(cache)}")


class _Writer(threading.Thread):
    """Runs `flush(chunk)` for each submitted chunk on its own thread; the first error stops it
    and is re-raised on the next submit() or finish()."""

    def __init__(self, flush: Callable[[Any], None], name: str = "mirage-import-writer"):
        super().__init__(daemon=True, name=name)
        import queue

        self.flush = flush
        self.queue: Any = queue.Queue(maxsize=2)  # bounded: the reader never runs far ahead
        self.error: BaseException | None = None
        self.start()

    def run(self):
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is None:
                try:
                    self.flush(chunk)
                except BaseException as e:  # noqa: BLE001 - handed to the importing thread
                    self.error = e

    def submit(self, chunk) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(chunk)

    def finish(self) -> None:
        """Wait for every submitted chunk; raise the writer's error if it had one."""
        if self.is_alive():
            self.queue.put(None)
            self.join()
        if self.error is not None:
            raise self.error

    def finish_quietly(self) -> None:
        """On the importer's own failure: stop after the chunk in hand, dropping the rest."""
        if self.error is None:
            self.error = Cancelled("import stopped")
        if self.is_alive():
            self.queue.put(None)
            self.join()


def cleanup_stale(ws: Workspace) -> int:
    """Delete staging rows left by imports whose process is gone (killed, crashed). Returns how many."""
    removed = 0
    for table in _CHILD:
        for row in list(ws.db.query(f"select id, meta from {table} where status = 'importing'")):
            info = _json(row["meta"]).get("import") or {}
            pid = info.get("pid")
            if pid == os.getpid() and info.get("token") in _live_imports:
                continue
            if pid and pid != os.getpid() and process_alive(int(pid)):
                continue
            _drop_staged(ws, table, row["id"])
            removed += 1
    return removed


_live_imports: set[str] = set()  # staging tokens of imports running in this process


class _Staging:
    """A private 'importing' row in `datasets` or `suites` that collects an import's rows."""

    def __init__(self, ws: Workspace, table: str, name: str, kind: str | None = None):
        self.ws, self.table, self.name = ws, table, name
        self.token = f"{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"
        cleanup_stale(ws)
        target = list(ws.db.query(f"select * from {table} where name = ? and status = 'ready'", [name]))
        self.target = dict(target[0]) if target else None
        meta = {"import": {"pid": os.getpid(), "token": self.token, "target": name, "started": now()}}
        _live_imports.add(self.token)
        with ws.transaction():
            cols = "name, status, meta, created_at" + (", kind" if table == "suites" else "")
            vals = [f"~importing~{name}~{self.token}", "importing", dumps(meta), now()]
            if table == "suites":
                vals.append(kind or "prompts")
            cur = ws.db.execute(f"insert into {table} ({cols}) values ({', '.join('?' * len(vals))})", vals)
            self.id = cur.lastrowid

    def discard(self) -> None:
        try:
            _drop_staged(self.ws, self.table, self.id)
        finally:
            _live_imports.discard(self.token)

    def done(self) -> None:
        _live_imports.discard(self.token)


# -- imitation data -------------------------------------------------------------------------------------
_EXAMPLE_INSERT = (
    "insert or ignore into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
    " n_tokens, content_hash, meta) values (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _report_path(ws: Workspace, what: str, name: str) -> Path:
    stamp = now().replace(":", "").replace("+0000", "Z")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return ws.artifact_dir("import-reports") / f"{what}-{safe}-{stamp}.jsonl"


class _BadRows:
    """Bad records: raised at once (all-or-nothing), or with --skip-bad written to a JSONL report."""

    def __init__(self, ws: Workspace, skip: bool, what: str, name: str):
        self.skip, self.n, self.path, self._f = skip, 0, None, None
        self._where = (ws, what, name)

    def __call__(self, e: BadInput, record: Any = None) -> None:
        if not self.skip:
            raise e
        self.n += 1
        if self._f is None:
            self.path = _report_path(*self._where)
            self._f = open(self.path, "w", encoding="utf-8")
        row = {"file": e.path, "line": e.line, "field": e.field, "reason": e.reason, "error": e.message}
        if record is not None:
            text = dumps(record) if not isinstance(record, BadInput) else None
            if text is not None and len(text) <= 10_000:
                row["record"] = record
        self._f.write(dumps(row) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def import_data(
    ws: Workspace,
    files: list[str | os.PathLike],
    name: str,
    *,
    fmt: str = "auto",
    skip_bad: bool = False,
    source: str | None = None,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Import imitation data from `files` into dataset `name` (created, or appended to).

    Re-importing a file already in the dataset changes nothing: its rows are all duplicates of
    rows already there, and a file whose content digest is recorded is not counted again.
    """
    if fmt != "auto" and fmt not in DATA_FORMATS:
        raise BadInput("--format", f"unknown format '{fmt}' (expected auto, {', '.join(DATA_FORMATS)})")
    if not name or not name.strip():
        raise BadInput("--name", "a dataset needs a name")
    sources = [Source(f) for f in files]  # a missing file fails here, before anything is written
    counter = token_counter(ws)
    total_bytes = sum(s.size for s in sources) or 1
    stage = _Staging(ws, "datasets", name)
    badrows = _BadRows(ws, skip_bad, "data", name)
    target = stage.target
    target_meta = _json(target["meta"]) if target else {}
    known = {(f.get("sha256"), f.get("format")) for f in target_meta.get("files", [])}
    stats = {"read": 0, "imported": 0, "duplicates": 0, "tokens": 0, "tokenizer": counter.name}
    files_meta, formats = [], []
    sinks: list[_ExampleSink] = []
    done_bytes = 0
    bulk = contextlib.ExitStack()
    try:
        bulk.enter_context(_bulk_writes(ws))
        for src in sources:
            kind = src.kind()
            if kind == "txt":
                raise BadInput(
                    src.label,
                    "a .txt file holds prompts, not conversations"
                    " (import it as a suite: `mirage import suite FILE --format prompts`)",
                )
            file_fmt = None if fmt == "auto" else fmt
            label = source or src.path.name
            batch: list[tuple] = []
            texts: list[str] = []
            before = dict(stats)
            sink = _ExampleSink(ws, stage.id, target, counter)
            stage_id = stage.id
            sinks.append(sink)
            for loc, rec in read_records(src, kind):
                if isinstance(rec, BadInput):
                    badrows(rec)
                    continue
                if file_fmt is None:
                    file_fmt = detect_data_format(rec)
                    if file_fmt is None:
                        keys = ", ".join(list(rec)[:8]) if isinstance(rec, dict) else _type(rec)
                        raise bad(
                            src.label,
                            f"unknown format: first record has {keys or 'no fields'};"
                            " expected conversations (ShareGPT), messages (OpenAI) or"
                            " instruction + output/response (Alpaca); or pass --format",
                            loc,
                        )
                try:
                    conv = normalise_conversation(rec, file_fmt)
                except _FieldError as fe:
                    badrows(bad(src.label, fe.reason, loc, fe.field), rec)
                    continue
                stats["read"] += 1
                conv_bytes = _dumps_bytes(conv)
                if len(conv_bytes) > MAX_RECORD_BYTES:
                    badrows(bad(src.label, _too_long(len(conv_bytes)), loc))
                    continue
                row_source = rec.get("source")
                if not isinstance(row_source, str):
                    row_source = rec.get("dataset")
                    if not isinstance(row_source, str):
                        row_source = label
                # the text once: user and assistant turns joined, the conversation as its layout
                layout, user, assistant = pack_conversation(conv)
                upstream_id = rec.get("id")
                meta = _dumps_bytes({"id": upstream_id}).decode() if isinstance(upstream_id, (str, int)) else "{}"
                batch.append(
                    (
                        stage_id,
                        0,
                        row_source,
                        _dumps_bytes(layout).decode("utf-8", "surrogatepass"),
                        user,
                        assistant,
                        0,
                        conv_bytes,
                        meta,
                    )
                )
                texts.append("\n".join([t["content"] for t in conv]))
                if len(batch) >= BATCH:
                    check_cancel(cancel)
                    sink.submit(batch, texts, stats["read"] - len(batch))
                    batch, texts = [], []
                    yield Progress(
                        done_bytes + _position(src),
                        total_bytes,
                        f"{before['imported'] + sink.stats['imported']:,} imported",
                    )
            if batch:
                sink.submit(batch, texts, stats["read"] - len(batch))
            for key, value in sink.finish().items():
                stats[key] += value
            if file_fmt is None:
                raise BadInput(src.label, "no records" if not badrows.n else "no good records")
            formats.append(file_fmt)
            digest = src.digest()
            files_meta.append(
                {
                    "name": src.path.name,
                    "path": str(src.path.resolve()),
                    "sha256": digest,
                    "format": file_fmt,
                    "rows": stats["read"] - before["read"],
                    "imported": stats["imported"] - before["imported"],
                }
            )
            done_bytes += src.size
            yield Progress(done_bytes, total_bytes, f"{stats['imported']:,} imported")
        bulk.close()
        stats["tokens"] = ws.db.execute(
            "select coalesce(sum(n_tokens), 0) from examples where dataset_id = ?", [stage.id]
        ).fetchone()[0]
        # A file already imported into this dataset adds nothing and is not counted again.
        repeat = [f for f in files_meta if (f["sha256"], f["format"]) in known]
        unchanged = stats["imported"] == 0 and len(repeat) == len(files_meta) and badrows.n == 0
        if unchanged:
            stage.discard()
        else:
            _publish_dataset(ws, stage, name, target, target_meta, files_meta, formats, stats, repeat)
            stage.done()
            from core.data.search import index_after_import

            search_index = index_after_import(ws)
    except BaseException:
        for sink in sinks:  # no write may land after the staged rows are dropped
            sink.abort()
        bulk.close()
        stage.discard()
        badrows.close()
        if badrows.path and not skip_bad:
            badrows.path.unlink(missing_ok=True)
        raise
    badrows.close()
    n, tokens = _dataset_totals(ws, name)
    return {
        "dataset": name,
        "format": formats[0] if len(set(formats)) == 1 else ",".join(formats),
        "files": [f["name"] for f in files_meta],
        "read": stats["read"],
        "imported": stats["imported"],
        "duplicates": stats["duplicates"],
        "skipped_bad": badrows.n,
        "report": str(badrows.path) if badrows.path else None,
        "tokens": stats["tokens"],
        "tokenizer": counter.name,
        "unchanged": unchanged,
        "examples": n,
        "total_tokens": tokens,
        "search_index": "none" if unchanged else search_index,
    }


def _dumps_bytes(obj) -> bytes:
    """`workspace.dumps(obj)` as UTF-8 bytes (same text: compact, sorted keys), via orjson when it can."""
    import orjson

    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # lone surrogates and the like: the stdlib copes
        return dumps(obj).encode("utf-8", "surrogatepass")


def _json(text: str | None) -> dict:
    import json

    return json.loads(text or "{}")


class _ExampleSink:
    """Counts, hashes and writes one file's chunks of staged example rows, on two threads.

    Token counting and content hashing run on a thread of their own between the parser and the
    database writer (numpy and SQLite release the GIL). Measured with throwaway in-process
    harnesses, not kept in the repository: counting on the writer's thread took ~8% longer, and
    writing from a child process fed pickled chunks through a pipe was no faster (5.6-6.1 s
    against 5.5-5.8 s for 100k rows): pickling and the pipe cost about what the shared GIL wasted.
    """

    def __init__(self, ws: Workspace, stage_id: int, target: dict | None, counter: TokenCounter):
        self.stats = {"imported": 0, "duplicates": 0}
        self._db = _Writer(lambda rows: _flush_examples(ws, stage_id, rows, self.stats, target))
        self._measure = _Writer(
            lambda chunk: self._db.submit(_measure_rows(counter, *chunk)), name="mirage-import-counter"
        )

    def submit(self, batch: list[tuple], texts: list[str], base: int) -> None:
        self._measure.submit((batch, texts, base))

    def finish(self) -> dict:
        """Wait for every chunk to be written; the file's {imported, duplicates}."""
        self._measure.finish()
        self._db.finish()
        return dict(self.stats)

    def abort(self) -> None:
        """Stop after the chunks in hand; nothing is written after this returns."""
        self._measure.finish_quietly()
        self._db.finish_quietly()


def _measure_rows(counter: TokenCounter, batch: list[tuple], texts: list[str], base: int) -> list[tuple]:
    """Counter thread: each row gets its position, token count and content hash (of its bytes)."""
    counts = counter.count(texts)
    return [
        r[:1] + (base + i,) + r[2:6] + (c, _sha256_holding_gil(r[7])) + r[8:]
        for i, (r, c) in enumerate(zip(batch, counts))
    ]


def _sha256_holding_gil(data: bytes) -> str:
    """hashlib.sha256(data).hexdigest(), fed in pieces under hashlib's 2 KB threshold for
    releasing the GIL: a 5 KB hash is too short to gain from running beside the parser, and each
    release left this thread waiting to get the GIL back from it."""
    h = hashlib.sha256()
    view = memoryview(data)
    for i in range(0, len(data), 2047):
        h.update(view[i : i + 2047])
    return h.hexdigest()


def _flush_examples(ws, stage_id: int, rows: list[tuple], stats: dict, target: dict | None) -> None:
    """Writer thread: drop rows the target dataset already has, insert the chunk."""
    n = len(rows)
    if target is not None:
        # Appending: a row whose conversation the dataset already has is a duplicate too.
        marks = ",".join("?" * len(rows))
        have = {
            h
            for (h,) in ws.db.execute(
                f"select content_hash from examples where dataset_id = ? and content_hash in ({marks})",
                [target["id"], *[r[7] for r in rows]],
            )
        }
        rows = [r for r in rows if r[7] not in have]
    inserted = _insert_indexed(ws, "datasets", stage_id, _EXAMPLE_INSERT, rows)
    stats["imported"] += inserted
    stats["duplicates"] += n - inserted


def _publish_dataset(ws, stage: _Staging, name, target, target_meta, files_meta, formats, stats, repeat) -> None:
    fmt = formats[0] if len(set(formats)) == 1 else "mixed"
    new_files = [f for f in files_meta if f not in repeat]
    with ws.transaction():
        # Queue the rows for the full-text index as they become visible (core.search indexes them).
        ws.db.execute("insert into fts_backlog (example_id) select id from examples where dataset_id = ?", [stage.id])
        # Look again: another import may have created the name meanwhile (then this one appends),
        # or someone deleted the dataset this import meant to append to (then it becomes it).
        rows = list(ws.db.query("select * from datasets where name = ? and status = 'ready'", [name]))
        target, target_meta = (dict(rows[0]), _json(rows[0]["meta"])) if rows else (None, {})
        if target is None:
            meta = {"duplicates": stats["duplicates"], "files": files_meta, "tokenizer": stats["tokenizer"]}
            ws.db.execute(
                "update datasets set name = ?, status = 'ready', kind = 'imitation', format = ?, source = ?,"
                " meta = ?, created_at = ? where id = ?",
                [name, fmt, ", ".join(f["name"] for f in files_meta), dumps(meta), now(), stage.id],
            )
        else:
            offset = ws.db.execute(
                "select coalesce(max(idx) + 1, 0) from examples where dataset_id = ?", [target["id"]]
            ).fetchone()[0]
            # Moving rows changes dataset_id and idx only: the FTS update trigger does not fire.
            ws.db.execute(
                "update examples set dataset_id = ?, idx = idx + ? where dataset_id = ?",
                [target["id"], offset, stage.id],
            )
            meta = dict(target_meta)
            meta["duplicates"] = (
                int(meta.get("duplicates", 0)) + stats["duplicates"] if new_files else int(meta.get("duplicates", 0))
            )
            meta["files"] = list(meta.get("files", [])) + new_files
            old_fmt = target["format"]
            ws.db.execute(
                "update datasets set format = ?, source = ?, meta = ? where id = ?",
                [
                    old_fmt if old_fmt == fmt else "mixed",
                    ", ".join(f["name"] for f in meta["files"]),
                    dumps(meta),
                    target["id"],
                ],
            )
            ws.db.execute("delete from datasets where id = ?", [stage.id])


def _dataset_totals(ws, name) -> tuple[int, int]:
    r = ws.db.execute(
        "select count(e.id), coalesce(sum(e.n_tokens), 0) from datasets d left join examples e"
        " on e.dataset_id = d.id where d.name = ? and d.status = 'ready'",
        [name],
    ).fetchone()
    return int(r[0]), int(r[1])


# -- evaluation suites -----------------------------------------------------------------------------------
_TASK_FIELDS = ("task", "category", "subject", "dataset")
_PROMPT_FIELDS = ("instruction", "prompt", "question")


def detect_suite_format(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    if {"prompt", "test", "entry_point"} <= set(rec):
        return "code"
    if "question" in rec and ("choices" in rec or {"A", "B", "C", "D"} <= set(rec)):
        return "mc"
    if "question" in rec and ("answer" in rec or "answers" in rec):
        return "qa"
    if any(f in rec for f in _PROMPT_FIELDS):
        return "prompts"
    return None


def _upstream_key(rec: dict) -> str | None:
    for f in ("task_id", "id", "key", "qid"):
        v = rec.get(f)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            return str(v)
    return None


def _task(rec: dict, default: str) -> str:
    for f in _TASK_FIELDS:
        v = rec.get(f)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return default


def normalise_item(rec: Any, fmt: str, task: str | None, default_task: str) -> dict:
    """An items row (without suite/idx) from one record; raises _FieldError on a bad field."""
    if not isinstance(rec, dict):
        raise _FieldError(None, f"expected an object, got {_type(rec)}")
    item: dict = {
        "key": _upstream_key(rec),
        "task": task or _task(rec, default_task),
        "gold": [],
        "choices": None,
        "tests": None,
        "entry_point": None,
        "meta": {},
    }
    if fmt == "qa":
        item["prompt"] = _str(rec, "question")
        key = "answer" if "answer" in rec else "answers"
        gold = rec.get(key)
        if gold is None:
            raise _FieldError("answer", "missing")
        if isinstance(gold, str):
            gold = [gold]
        if not isinstance(gold, list) or not gold or not all(isinstance(g, (str, int, float)) for g in gold):
            raise _FieldError(
                key,
                "expected a non-empty list of answer strings"
                if isinstance(gold, list)
                else f"expected a list of answers, got {_type(gold)}",
            )
        item["gold"] = [str(g) for g in gold]
    elif fmt == "mc":
        item["prompt"] = _str(rec, "question")
        if "choices" in rec:
            choices = rec["choices"]
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise _FieldError("choices", "expected a list of at least 2 strings")
        else:
            choices = [_str(rec, letter) for letter in "ABCD"]
            if isinstance(rec.get("E"), str) and rec["E"].strip():
                choices.append(rec["E"])
        answer = rec.get("answer")
        if isinstance(answer, str) and answer.strip().isdigit():
            answer = int(answer.strip())
        if isinstance(answer, bool) or answer is None:
            raise _FieldError("answer", "missing" if answer is None else "expected a letter or an index")
        if isinstance(answer, int):
            if not 0 <= answer < len(choices):
                raise _FieldError("answer", f"index {answer} is not one of the {len(choices)} choices")
            letter = LETTERS[answer]
        elif isinstance(answer, str) and answer.strip().upper() in LETTERS[: len(choices)]:
            letter = answer.strip().upper()
        else:
            raise _FieldError("answer", f"expected one of {', '.join(LETTERS[: len(choices)])}, got {answer!r}")
        item["choices"], item["gold"] = choices, [letter]
    elif fmt == "code":
        item["prompt"] = _str(rec, "prompt")
        item["tests"] = _str(rec, "test")
        item["entry_point"] = _str(rec, "entry_point")
        solution = _str(rec, "canonical_solution", required=False)
        if solution is not None:
            item["meta"]["canonical_solution"] = solution
    elif fmt == "prompts":
        for f in _PROMPT_FIELDS:
            if f in rec:
                item["prompt"] = _str(rec, f)
                break
        else:
            raise _FieldError("instruction", "missing (expected instruction, prompt or question)")
        extra = rec.get("input")
        if isinstance(extra, str) and extra.strip():
            item["prompt"] += f"\n\n{extra}"
    if not item["prompt"].strip():
        raise _FieldError({"qa": "question", "mc": "question", "code": "prompt"}.get(fmt, "prompt"), "empty")
    return item


_ITEM_INSERT = (
    "insert or ignore into items (suite_id, idx, key, prompt, task, gold, choices, tests, entry_point,"
    " content_hash, meta) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def import_suite(
    ws: Workspace,
    path: str | os.PathLike,
    name: str,
    *,
    fmt: str = "auto",
    task: str | None = None,
    skip_bad: bool = False,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Import an evaluation suite (QA, multiple choice, code with tests, plain prompts).

    Items carry a task label: `task` if given, else the record's task/category/subject/dataset
    field, else the suite's name. Re-importing the same file changes nothing; another file into
    the same suite appends its new items.
    """
    if fmt != "auto" and fmt not in SUITE_FORMATS:
        raise BadInput("--format", f"unknown format '{fmt}' (expected auto, {', '.join(SUITE_FORMATS)})")
    if not name or not name.strip():
        raise BadInput("--name", "a suite needs a name")
    src = Source(path)
    kind = src.kind()
    if kind == "txt":
        if fmt not in ("auto", "prompts"):
            raise BadInput(src.label, f"a .txt file holds one prompt per line; it cannot be a '{fmt}' suite")
        fmt = "prompts"
    stage = _Staging(ws, "suites", name, None if fmt == "auto" else fmt)
    badrows = _BadRows(ws, skip_bad, "suite", name)
    target = stage.target
    target_meta = _json(target["meta"]) if target else {}
    stats = {"read": 0, "imported": 0, "duplicates": 0}
    suite_fmt = None if fmt == "auto" else fmt
    try:
        batch: list[tuple] = []
        for loc, rec in read_records(src, kind):
            if isinstance(rec, BadInput):
                badrows(rec)
                continue
            if suite_fmt is None:
                suite_fmt = detect_suite_format(rec)
                if suite_fmt is None:
                    keys = ", ".join(list(rec)[:8]) if isinstance(rec, dict) else _type(rec)
                    raise bad(
                        src.label,
                        f"unknown format: first record has {keys or 'no fields'}; expected"
                        " question + answer (qa), question + A-D/choices + answer (mc),"
                        " prompt + test + entry_point (code) or instruction/prompt/question"
                        " (prompts); or pass --format",
                        loc,
                    )
            try:
                item = normalise_item(rec, suite_fmt, task, name)
            except _FieldError as fe:
                badrows(bad(src.label, fe.reason, loc, fe.field), rec)
                continue
            stats["read"] += 1
            gold, choices = dumps(item["gold"]), dumps(item["choices"]) if item["choices"] is not None else None
            content_hash = hashlib.sha256(
                dumps([item["prompt"], item["gold"], item["choices"], item["tests"], item["task"]]).encode(
                    "utf-8", "surrogatepass"
                )
            ).hexdigest()
            batch.append(
                (
                    stage.id,
                    stats["read"] - 1,
                    item["key"],
                    item["prompt"],
                    item["task"],
                    gold,
                    choices,
                    item["tests"],
                    item["entry_point"],
                    content_hash,
                    dumps(item["meta"]),
                )
            )
            if len(batch) >= BATCH:
                check_cancel(cancel)
                _flush_items(ws, stage.id, batch, stats, target)
                yield Progress(_position(src), src.size or 1, f"{stats['imported']:,} items")
        _flush_items(ws, stage.id, batch, stats, target)
        if suite_fmt is None:
            raise BadInput(src.label, "no records" if not badrows.n else "no good records")
        digest = src.digest()
        repeat = any(f.get("sha256") == digest for f in target_meta.get("files", []))
        unchanged = stats["imported"] == 0 and (repeat or stats["read"] > 0)
        if unchanged and target is not None:
            stage.discard()
        else:
            if target is not None and target["kind"] != suite_fmt:
                raise BadInput(src.label, f"suite '{name}' holds {target['kind']} items; this file is {suite_fmt}")
            file_meta = {
                "name": src.path.name,
                "path": str(src.path.resolve()),
                "sha256": digest,
                "format": suite_fmt,
                "rows": stats["read"],
                "imported": stats["imported"],
            }
            _publish_suite(ws, stage, name, suite_fmt, kind, target, target_meta, file_meta, stats)
            stage.done()
            unchanged = False
    except BaseException:
        stage.discard()
        badrows.close()
        raise
    badrows.close()
    n_items, n_tasks = ws.db.execute(
        "select count(i.id), count(distinct i.task) from suites s left join items i on i.suite_id = s.id"
        " where s.name = ? and s.status = 'ready'",
        [name],
    ).fetchone()
    return {
        "suite": name,
        "kind": suite_fmt,
        "file": src.path.name,
        "read": stats["read"],
        "imported": stats["imported"],
        "duplicates": stats["duplicates"],
        "skipped_bad": badrows.n,
        "report": str(badrows.path) if badrows.path else None,
        "unchanged": unchanged,
        "items": n_items,
        "tasks": n_tasks,
    }


def _flush_items(ws, stage_id: int, batch: list[tuple], stats: dict, target: dict | None) -> None:
    if not batch:
        return
    rows = batch
    if target is not None:
        marks = ",".join("?" * len(rows))
        have = {
            h
            for (h,) in ws.db.execute(
                f"select content_hash from items where suite_id = ? and content_hash in ({marks})",
                [target["id"], *[r[9] for r in rows]],
            )
        }
        rows = [r for r in rows if r[9] not in have]
    inserted = _insert_indexed(ws, "suites", stage_id, _ITEM_INSERT, rows)
    stats["imported"] += inserted
    stats["duplicates"] += len(batch) - inserted
    batch.clear()


def _publish_suite(ws, stage: _Staging, name, fmt, file_kind, target, target_meta, file_meta, stats) -> None:
    with ws.transaction():
        # Look again: the suite may have been created or deleted by someone else meanwhile.
        rows = list(ws.db.query("select * from suites where name = ? and status = 'ready'", [name]))
        target, target_meta = (dict(rows[0]), _json(rows[0]["meta"])) if rows else (None, {})
        if target is None:
            meta = {"duplicates": stats["duplicates"], "files": [file_meta]}
            ws.db.execute(
                "update suites set name = ?, status = 'ready', kind = ?, format = ?, source = ?, meta = ?,"
                " created_at = ? where id = ?",
                [name, fmt, file_kind, file_meta["name"], dumps(meta), now(), stage.id],
            )
        else:
            offset = ws.db.execute(
                "select coalesce(max(idx) + 1, 0) from items where suite_id = ?", [target["id"]]
            ).fetchone()[0]
            ws.db.execute(
                "update items set suite_id = ?, idx = idx + ? where suite_id = ?", [target["id"], offset, stage.id]
            )
            meta = dict(target_meta)
            meta["duplicates"] = int(meta.get("duplicates", 0)) + stats["duplicates"]
            meta["files"] = list(meta.get("files", [])) + [file_meta]
            ws.db.execute(
                "update suites set source = ?, meta = ? where id = ?",
                [", ".join(f["name"] for f in meta["files"]), dumps(meta), target["id"]],
            )
            ws.db.execute("delete from suites where id = ?", [stage.id])


# -- recorded outputs ------------------------------------------------------------------------------------
def _recorded_key(fingerprint: str, prompt: str) -> str:
    # The same key rule as core.generation.cache_key: sha256 of (fingerprint, prompt, decoding).
    return hashlib.sha256(dumps([fingerprint, prompt, {}]).encode("utf-8", "surrogatepass")).hexdigest()


def import_outputs(
    ws: Workspace,
    path: str | os.PathLike,
    suite: str,
    model: str,
    *,
    skip_bad: bool = False,
    cancel: threading.Event | None = None,
) -> Work[dict]:
    """Attach another system's outputs (AlpacaEval style: instruction, output, generator) to the
    suite's items by exact prompt, as generations of model `model` (a 'recorded' model).

    Rows whose prompt is not in the suite are counted (and listed in the report file). The file
    is validated and matched in full before anything is written; the writes are one transaction
    (an outputs file has one row per suite item at most, so it is short).
    """
    from core.data.datasets import get_suite

    s = get_suite(ws, suite)
    if not model or not model.strip():
        raise BadInput("--model", "recorded outputs need a model name")
    src = Source(path)
    kind = src.kind()
    prompts: dict[str, int] = {}
    for item_id, prompt in ws.db.execute("select id, prompt from items where suite_id = ? order by idx", [s["id"]]):
        prompts.setdefault(prompt, item_id)
    badrows = _BadRows(ws, skip_bad, "outputs", f"{suite}-{model}")
    fp = f"recorded:{model}"
    rows: list[tuple] = []
    unmatched: list[dict] = []
    generators: list[str] = []
    read = 0
    try:
        for loc, rec in read_records(src, kind):
            if isinstance(rec, BadInput):
                badrows(rec)
                continue
            try:
                if not isinstance(rec, dict):
                    raise _FieldError(None, f"expected an object, got {_type(rec)}")
                for f in _PROMPT_FIELDS:
                    if f in rec:
                        prompt = _str(rec, f)
                        break
                else:
                    raise _FieldError("instruction", "missing")
                output = _str(rec, "output")
                generator = _str(rec, "generator", required=False) or model
            except _FieldError as fe:
                badrows(bad(src.label, fe.reason, loc, fe.field), rec)
                continue
            read += 1
            if generator not in generators:
                generators.append(generator)
            item_id = prompts.get(prompt)
            if item_id is None:
                unmatched.append({"where": f"{loc.unit} {loc.n}", "prompt": prompt[:200]})
                continue
            rows.append(
                (
                    model,
                    fp,
                    item_id,
                    prompt,
                    "{}",
                    _recorded_key(fp, prompt),
                    output,
                    dumps({"generator": generator}),
                    now(),
                )
            )
            if read % BATCH == 0:
                check_cancel(cancel)
                yield Progress(_position(src), src.size or 1, f"{len(rows):,} matched")
        if read == 0:
            raise BadInput(src.label, "no records" if not badrows.n else "no good records")
        if not rows:
            raise BadInput(
                src.label,
                f"none of its {read:,} prompts is an item of suite '{suite}'"
                " (outputs attach by exact prompt: is it the right suite?)",
            )
        with ws.transaction():
            if not ws.db.execute("select 1 from models where name = ?", [model]).fetchone():
                spec = {"source": str(src.path.resolve()), "generator": generators[0] if generators else model}
                ws.db.execute(
                    "insert into models (name, kind, spec, created_at) values (?, 'recorded', ?, ?)",
                    [model, dumps(spec), now()],
                )
            inserted = 0
            for i in range(0, len(rows), BATCH):
                inserted += ws.db.conn.executemany(
                    "insert or ignore into generations (model, fingerprint, item_id, prompt, decoding, cache_key,"
                    " output, meta, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows[i : i + BATCH],
                ).rowcount
    except BaseException:
        badrows.close()
        raise
    if unmatched and badrows.path is None:
        badrows.skip = True  # the report lists unmatched rows even without --skip-bad
    for u in unmatched:
        badrows(BadInput(src.label, "no item in the suite has this prompt", field="instruction"), u)
    badrows.close()
    return {
        "suite": suite,
        "model": model,
        "file": src.path.name,
        "read": read,
        "matched": len(rows),
        "imported": inserted,
        "already_present": len(rows) - inserted,
        "unmatched": len(unmatched),
        "skipped_bad": badrows.n - len(unmatched),
        "report": str(badrows.path) if badrows.path else None,
        "generators": generators,
    }
