"""Importing imitation data: read, normalise, count and hash, write (three threads), publish."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import threading

from core.data.datasets import pack_conversation
from core.data.ingest.errors import MAX_RECORD_BYTES, bad, too_long
from core.data.ingest.normalise import DATA_FORMATS, detect_data_format, normalise_conversation
from core.data.ingest.sources import Source, read_records
from core.data.ingest.staging import BATCH, BadRows, Staging, Writer, bulk_writes, insert_indexed, parse_meta
from core.data.ingest.tokens import TokenCounter, token_counter
from core.errors import BadInput, FieldError, type_name
from core.runtime.progress import Progress, Work, check_cancel
from core.store.workspace import Workspace, dumps, now

_EXAMPLE_INSERT = (
    "insert or ignore into examples (dataset_id, idx, source, conversation, user_text, assistant_text,"
    " n_tokens, content_hash, meta) values (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


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
    stage = Staging(ws, "datasets", name)
    badrows = BadRows(ws, skip_bad, "data", name)
    target = stage.target
    target_meta = parse_meta(target["meta"]) if target else {}
    known = {(f.get("sha256"), f.get("format")) for f in target_meta.get("files", [])}
    stats = {"read": 0, "imported": 0, "duplicates": 0, "tokens": 0, "tokenizer": counter.name}
    files_meta, formats = [], []
    sinks: list[_ExampleSink] = []
    done_bytes = 0
    bulk = contextlib.ExitStack()
    try:
        bulk.enter_context(bulk_writes(ws))
        bulk.enter_context(_no_cyclic_gc())
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
            convs: list[list[dict]] = []
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
                        keys = ", ".join(list(rec)[:8]) if isinstance(rec, dict) else type_name(rec)
                        raise bad(
                            src.label,
                            f"unknown format: first record has {keys or 'no fields'};"
                            " expected conversations (ShareGPT), messages (OpenAI) or"
                            " instruction + output/response (Alpaca); or pass --format",
                            loc,
                        )
                try:
                    conv = normalise_conversation(rec, file_fmt)
                except FieldError as fe:
                    badrows(bad(src.label, fe.reason, loc, fe.field), rec)
                    continue
                stats["read"] += 1
                conv_bytes = _dumps_bytes(conv)
                if len(conv_bytes) > MAX_RECORD_BYTES:
                    badrows(bad(src.label, too_long(len(conv_bytes)), loc))
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
                convs.append(conv)
                if len(batch) >= BATCH:
                    check_cancel(cancel)
                    sink.submit(batch, convs, stats["read"] - len(batch))
                    batch, convs = [], []
                    yield Progress(
                        done_bytes + src.position(),
                        total_bytes,
                        f"{before['imported'] + sink.stats['imported']:,} imported",
                        unit="bytes",
                    )
            if batch:
                sink.submit(batch, convs, stats["read"] - len(batch))
            for key, value in sink.finish().items():
                stats[key] += value
            if stats["read"] == before["read"]:  # every file adds records: --skip-bad or not
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
            yield Progress(done_bytes, total_bytes, f"{stats['imported']:,} imported", unit="bytes")
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
        "tokens_approx": True,  # content only, not the rendered training text (core.finetune.tokens)
        "unchanged": unchanged,
        "examples": n,
        "total_tokens": tokens,
        "search_index": "none" if unchanged else search_index,
    }


@contextlib.contextmanager
def _no_cyclic_gc():
    """The cyclic garbage collector off while an import runs: the rows and conversations it
    builds hold no reference cycles, so with 100,000s of container objects made and freed its
    passes over the young ones find nothing to free and only cost time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _dumps_bytes(obj) -> bytes:
    """`workspace.dumps(obj)` as UTF-8 bytes (same text: compact, sorted keys), via orjson when it can.

    Not OPT_SORT_KEYS: every dict this writes is built with its keys in sorted order (turns by
    normalise_conversation, layouts by pack_conversation, `{"id": ...}`), and sorting them again
    was a third of orjson's time on the import's critical path."""
    import orjson

    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # lone surrogates and the like: the stdlib copes
        return dumps(obj).encode("utf-8", "surrogatepass")


# Rows per write transaction of a data import: five parse chunks. Each transaction rewrites every
# page of the content-hash index it touches (the hashes land all over it), so fewer, larger
# transactions write far less to the WAL, while a lock hold stays a fraction of a second.
WRITE_ROWS = 5 * BATCH


class _ExampleSink:
    """Counts, hashes and writes one file's chunks of staged example rows, on two threads.

    Token counting and content hashing run on a thread of their own between the parser and the
    database writer (numpy and SQLite release the GIL), so a chunk is counted while the one
    before it is written. Threads, not a writer process: pickling chunks through a pipe costs
    about what the shared GIL does. Counted chunks are written WRITE_ROWS at a time.
    """

    def __init__(self, ws: Workspace, stage_id: int, target: dict | None, counter: TokenCounter):
        self.stats = {"imported": 0, "duplicates": 0}
        self._counter = counter
        self._pending: list[tuple] = []  # counted rows not yet handed to the writer (counter thread)
        # depth 1: with WRITE_ROWS rows a transaction, one waiting is enough to keep SQLite busy
        self._db = Writer(lambda rows: _flush_examples(ws, stage_id, rows, self.stats, target), depth=1)
        self._measure = Writer(self._measured, name="mirage-import-counter")

    def _measured(self, chunk: tuple) -> None:
        self._pending += _measure_rows(self._counter, *chunk)
        if len(self._pending) >= WRITE_ROWS:
            self._write_pending()

    def _write_pending(self) -> None:
        rows, self._pending = self._pending, []
        self._db.submit(rows)

    def submit(self, batch: list[tuple], convs: list[list[dict]], base: int) -> None:
        self._measure.submit((batch, convs, base))

    def finish(self) -> dict:
        """Wait for every chunk to be written; the file's {imported, duplicates}."""
        self._measure.finish()
        if self._pending:
            self._write_pending()
        self._db.finish()
        return dict(self.stats)

    def abort(self) -> None:
        """Stop after the chunks in hand; nothing is written after this returns."""
        self._measure.finish_quietly()
        self._pending = []
        self._db.finish_quietly()


def _measure_rows(counter: TokenCounter, batch: list[tuple], convs: list[list[dict]], base: int) -> list[tuple]:
    """Counter thread: each row gets its position, token count and content hash (of its bytes)."""
    counts = counter.count_conversations(convs)
    return [
        r[:1] + (base + i,) + r[2:6] + (c, _sha256_holding_gil(r[7])) + r[8:]
        for i, (r, c) in enumerate(zip(batch, counts))
    ]


def _sha256_holding_gil(data: bytes) -> str:
    """hashlib.sha256(data).hexdigest(), fed in pieces under hashlib's 2 KB threshold for
    releasing the GIL: a 5 KB hash is too short to gain from running beside the parser, and each
    release leaves this thread waiting to get the GIL back from it."""
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
    inserted = insert_indexed(ws, "datasets", stage_id, _EXAMPLE_INSERT, rows)
    stats["imported"] += inserted
    stats["duplicates"] += n - inserted


def _publish_dataset(ws, stage: Staging, name, target, target_meta, files_meta, formats, stats, repeat) -> None:
    fmt = formats[0] if len(set(formats)) == 1 else "mixed"
    new_files = [f for f in files_meta if f not in repeat]
    with ws.transaction():
        # Look again: another import may have created the name meanwhile (then this one appends),
        # or someone deleted the dataset this import meant to append to (then it becomes it).
        rows = list(ws.db.query("select * from datasets where name = ? and status = 'ready'", [name]))
        target, target_meta = (dict(rows[0]), parse_meta(rows[0]["meta"])) if rows else (None, {})
        if target is not None:
            _drop_published_duplicates(ws, stage.id, target["id"], stats)
        # Queue the rows for the full-text index as they become visible (core.data.search indexes them).
        ws.db.execute("insert into fts_backlog (example_id) select id from examples where dataset_id = ?", [stage.id])
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


def _drop_published_duplicates(ws, stage_id: int, target_id: int, stats: dict) -> None:
    """Drop staged rows the target dataset gained while this import ran (another import of the
    same rows published first): they are duplicates, and moving them would break the dataset's
    one-row-per-content rule."""
    where = "dataset_id = ? and content_hash in (select content_hash from examples where dataset_id = ?)"
    (tokens,) = ws.db.execute(
        f"select coalesce(sum(n_tokens), 0) from examples where {where}", [stage_id, target_id]
    ).fetchone()
    n = ws.db.execute(f"delete from examples where {where}", [stage_id, target_id]).rowcount
    stats["imported"] -= n
    stats["duplicates"] += n
    stats["tokens"] -= tokens


def _dataset_totals(ws, name) -> tuple[int, int]:
    r = ws.db.execute(
        "select count(e.id), coalesce(sum(e.n_tokens), 0) from datasets d left join examples e"
        " on e.dataset_id = d.id where d.name = ? and d.status = 'ready'",
        [name],
    ).fetchone()
    return int(r[0]), int(r[1])
