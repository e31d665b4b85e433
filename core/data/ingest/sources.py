"""Reading inputs record by record: jsonl, JSON arrays, csv/tsv, Parquet, `datasets` folders, txt.

Each reader streams (memory does not grow with the file) and hashes the bytes it reads, so a
file's digest costs no second pass.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import itertools
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.data.ingest.errors import MAX_RECORD_BYTES, Loc, bad, record_too_long, too_long
from core.data.ingest.staging import BATCH
from core.errors import BadInput


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
        self._rows_pos: int | None = None  # Parquet / `datasets`: the share of rows read, in bytes

    def position(self) -> int:
        """How far the read has come, in bytes of `size` (for .gz: compressed bytes read): the progress bar."""
        return self._rows_pos or (self._hashing.pos if self._hashing else 0)

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
        with self.open_binary() as f, unreadable_gzip(self):
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


@contextlib.contextmanager
def unreadable_gzip(src: Source):
    """A truncated or corrupt .gz as BadInput naming the file (gzip's EOFError would otherwise
    reach click, which takes it for Ctrl-D and aborts)."""
    try:
        yield
    except EOFError:
        raise BadInput(src.label, "truncated .gz file (the compressed data ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise BadInput(src.label, f"corrupt .gz file ({e})") from None


def read_records(src: Source, kind: str) -> Iterator[tuple[Loc, Any]]:
    """Yield (where, record) per record; a record that cannot be read comes as a BadInput value
    (the caller skips or raises it). Errors that leave no way to find the next record raise."""
    with unreadable_gzip(src):
        yield from _records(src, kind)


def good_records(src: Source, kind: str, on_bad: Callable[[BadInput], None]) -> Iterator[tuple[Loc, Any]]:
    """`read_records` without the records that cannot be read or are over the size bound: each of
    those goes to `on_bad` (a BadRows, which reports it or raises; or a function that raises)."""
    for loc, rec in read_records(src, kind):
        if isinstance(rec, BadInput):
            on_bad(rec)
            continue
        reason = record_too_long(rec)
        if reason is not None:
            on_bad(bad(src.label, reason, loc))
            continue
        yield loc, rec


def _records(src: Source, kind: str) -> Iterator[tuple[Loc, Any]]:
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
                yield Loc("line", n), bad(src.label, too_long(size), Loc("line", n))
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
        # strict: an unterminated quote is an error, not a last field that swallows the rest of the file
        reader = csv.reader(text, delimiter=delim, strict=True)
        header: list[str] | None = None
        while True:
            start = reader.line_num + 1  # the line the record starts on; line_num is where it ends
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                msg = str(e)
                if "field larger" in msg:
                    raise bad(src.label, too_long(), Loc("line", start)) from None
                if msg == "unexpected end of data":
                    i = _open_quote_field(src, start, delim)
                    field = None if i is None else header[i] if header and i < len(header) else f"column {i + 1}"
                    raise bad(src.label, "quoted field never closed", Loc("line", start), field) from None
                raise bad(src.label, f"malformed CSV ({msg})", Loc("line", reader.line_num)) from None
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


def _open_quote_field(src: Source, line: int, delim: str) -> int | None:
    """The index of the field whose quote opens on `line` and never closes (read again: errors only)."""
    with src.open_binary() as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        raw = next(itertools.islice(text, line - 1, None), "")
    field, quoted, at_start, i = 0, None, True, 0
    while i < len(raw):
        c = raw[i]
        if quoted is not None:
            if c == '"' and raw[i + 1 : i + 2] == '"':
                i += 1
            elif c == '"':
                quoted = None
        elif c == delim:
            field, at_start = field + 1, True
            i += 1
            continue
        elif c == '"' and at_start:
            quoted = field
        at_start = False
        i += 1
    return quoted


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
        src._rows_pos = int(src.size * n / max(pf.metadata.num_rows, 1))


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
        src._rows_pos = int(src.size * n / max(total, 1))


def _read_txt(src: Source):
    with src.open_binary() as f:
        n = 0
        for raw in f:
            n += 1
            if len(raw) > MAX_RECORD_BYTES:
                yield Loc("line", n), bad(src.label, too_long(len(raw)), Loc("line", n))
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
