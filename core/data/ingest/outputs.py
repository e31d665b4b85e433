"""Importing recorded outputs: another system's answers attached to a suite's items by prompt."""

from __future__ import annotations

import hashlib
import os
import threading
import unicodedata

from core.api.suites import PROMPT_FIELDS
from core.data.ingest.errors import bad, results_hint
from core.data.ingest.sources import Source, good_records
from core.data.ingest.staging import BATCH, BadRows
from core.errors import BadInput, FieldError, read_str, type_name
from core.runtime.progress import Progress, Work, check_cancel
from core.store.workspace import Workspace, dumps, now


def _recorded_key(fingerprint: str, prompt: str, item_id: int) -> str:
    # core.models.generation.cache_key's rule (sha256 of fingerprint, prompt, decoding) plus the
    # item: a recorded output answers one item, and two suites may share a prompt.
    return hashlib.sha256(dumps([fingerprint, prompt, {}, item_id]).encode("utf-8", "surrogatepass")).hexdigest()


def match_key(prompt: str) -> str:
    """What prompts are matched by: line endings as \\n, no surrounding whitespace, Unicode NFC."""
    return unicodedata.normalize("NFC", prompt.replace("\r\n", "\n").replace("\r", "\n").strip())


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
    suite's items by prompt (`match_key`: line endings, surrounding whitespace and Unicode form
    aside), as generations of model `model` (a 'recorded' model).

    A row whose prompt is no item's is an error naming its line; with `skip_bad` the rest attach
    and such rows are counted and listed in the report file. The file is validated and matched in
    full before anything is written; the writes are one transaction (an outputs file has one row
    per suite item at most, so it is short).
    """
    from core.data.datasets import get_suite

    s = get_suite(ws, suite)
    if not model or not model.strip():
        raise BadInput("--model", "recorded outputs need a model name")
    src = Source(path)
    kind = src.kind()
    prompts: dict[str, tuple[int, str]] = {}
    for item_id, prompt in ws.db.execute("select id, prompt from items where suite_id = ? order by idx", [s["id"]]):
        prompts.setdefault(match_key(prompt), (item_id, prompt))
    badrows = BadRows(ws, skip_bad, "outputs", f"{suite}-{model}")
    fp = f"recorded:{model}"
    rows: list[tuple] = []
    unmatched: list[dict] = []
    generators: list[str] = []
    read = 0
    try:
        for loc, rec in good_records(src, kind, badrows):
            try:
                if not isinstance(rec, dict):
                    raise FieldError(None, f"expected an object, got {type_name(rec)}")
                for f in PROMPT_FIELDS:
                    if f in rec:
                        prompt = read_str(rec, f)
                        break
                else:
                    raise FieldError("instruction", "missing" + results_hint(rec))
                if "output" not in rec:
                    raise FieldError("output", "missing" + results_hint(rec))
                output = read_str(rec, "output")
                generator = read_str(rec, "generator", required=False) or model
            except FieldError as fe:
                badrows(bad(src.label, fe.reason, loc, fe.field), rec)
                continue
            read += 1
            if generator not in generators:
                generators.append(generator)
            match = prompts.get(match_key(prompt))
            if match is None:
                unmatched.append((loc, {"where": f"{loc.unit} {loc.n}", "prompt": prompt[:200]}))
                continue
            item_id, prompt = match  # the generation records the prompt as the suite has it
            rows.append(
                (
                    model,
                    fp,
                    item_id,
                    prompt,
                    "{}",
                    _recorded_key(fp, prompt, item_id),
                    output,
                    dumps({"generator": generator}),
                    now(),
                )
            )
            if read % BATCH == 0:
                check_cancel(cancel)
                yield Progress(src.position(), src.size or 1, f"{len(rows):,} matched", unit="bytes")
        if read == 0:
            raise BadInput(src.label, "no records" if not badrows.n else "no good records")
        if not rows:
            raise BadInput(
                src.label,
                f"none of its {read:,} prompts is an item of suite '{suite}'"
                " (outputs attach by prompt: is it the right suite?)",
            )
        if unmatched and not skip_bad:
            loc, _ = unmatched[0]
            raise bad(
                src.label,
                f"no item of suite '{suite}' has this prompt ({len(unmatched):,} rows match none;"
                " --skip-bad attaches the rest)",
                loc,
                "instruction",
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
    for loc, u in unmatched:
        badrows(bad(src.label, "no item in the suite has this prompt", loc, "instruction"), u)
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
