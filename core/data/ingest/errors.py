"""Errors that name their place: the file, the record (line, item or row) and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.errors import BadInput

MAX_RECORD_BYTES = 16 * 1024 * 1024  # a record (line) larger than this is bad input, not data


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


def too_long(n: int | None = None) -> str:
    limit = f"the {MAX_RECORD_BYTES // (1024 * 1024)} MB limit for one record"
    return f"{n / (1024 * 1024):.0f} MB is over {limit}" if n else f"over {limit}"


def record_too_long(rec: Any) -> str | None:
    """The too_long() reason for a record whose compact JSON is over the limit, else None: the
    bound on a line of JSONL, applied to records of every kind of file (JSON arrays, Parquet)."""
    import orjson

    try:
        n = len(orjson.dumps(rec, default=str, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:  # lone surrogates and the like: the stdlib copes
        n = len(json.dumps(rec, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return too_long(n) if n > MAX_RECORD_BYTES else None


def results_hint(rec: Any) -> str:
    """' (... use `mirage import results`)' when a record is another tool's result, else ''."""
    if not isinstance(rec, dict):
        return ""
    tool = None
    if "doc_id" in rec and ("resps" in rec or "filtered_resps" in rec):
        tool = "an lm-eval --log_samples file"
    elif "output_1" in rec and "output_2" in rec and "preference" in rec:
        tool = "AlpacaEval annotations"
    elif "eval" in rec and "samples" in rec:
        tool = "an inspect log"
    elif "results" in rec and ("evalId" in rec or "config" in rec):
        tool = "a promptfoo result file"
    elif "mirage_export" in rec:
        tool = "a `mirage export` file"
    return f" (this looks like {tool}: use `mirage import results`)" if tool else ""
