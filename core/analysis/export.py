"""Per-sample export of a suite: every item with its gold, each model's output, decoding and
fingerprint, and every score (mirage's and the imported tools'), as JSONL (which `mirage import
results` reads back), a `datasets` save_to_disk folder, or AlpacaEval `model_outputs.json` files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.analysis.imported import imported_values
from core.data.datasets import get_suite, models_with_outputs
from core.errors import BadInput, NotFound
from core.scores.outputs import score_rows
from core.store.db import select_in
from core.store.workspace import Workspace, now

FORMATS = ("jsonl", "hf", "alpaca-eval")
EXPORT_VERSION = 1


def _mirage_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("mirage")
    except metadata.PackageNotFoundError:
        return None


def export_records(ws: Workspace, suite: str, models: list[str] | None = None) -> Iterator[dict]:
    """One record per item × model (the model's latest output on it), in item order."""
    s = get_suite(ws, suite)
    have = models_with_outputs(ws, suite)
    if models:
        missing = [m for m in models if m not in have]
        if missing:
            raise NotFound(f"no outputs of {', '.join(missing)} on suite '{suite}' (have: {', '.join(have) or 'none'})")
    else:
        models = list(have)
    if not models:
        raise NotFound(f"no outputs on suite '{suite}' to export")
    gens, mine = score_rows(ws, suite, models)
    theirs = imported_values(ws, [g["generation_id"] for g in gens])
    ids = [g["generation_id"] for g in gens]
    extra = {
        gid: (fp, prompt, json.loads(dec or "{}"), json.loads(meta or "{}"), created)
        for gid, fp, prompt, dec, meta, created in select_in(
            ws.db,
            "select id, fingerprint, prompt, decoding, meta, created_at from generations where id in ({in})",
            ids,
        )
    }
    kinds = {
        r["name"]: r["kind"]
        for r in ws.db.query(f"select name, kind from models where name in ({','.join('?' * len(models))})", models)
    }
    keys = {r["id"]: r["key"] for r in ws.db.query("select id, key from items where suite_id = ?", [s["id"]])}
    prov = {"mirage_version": _mirage_version(), "exported_at": now(), "workspace": str(ws.root)}
    for g in gens:
        gid = g["generation_id"]
        fp, rendered, decoding, gmeta, created = extra[gid]
        item = {
            "idx": g["idx"],
            "key": keys.get(g["item_id"]),
            "task": g["task"],
            "prompt": g["item_prompt"],
            "gold": g["gold"],
            "choices": g["choices"],
            "tests": g["tests"],
            "entry_point": g["entry_point"],
        }
        if g["item_meta"].get("canonical_solution"):
            item["canonical_solution"] = g["item_meta"]["canonical_solution"]
        yield {
            "mirage_export": EXPORT_VERSION,
            "suite": suite,
            "kind": s["kind"],
            "item": item,
            "model": g["model"],
            "model_kind": kinds.get(g["model"], "packaged"),
            "fingerprint": fp,
            "output": g["output"],
            "rendered_prompt": rendered,
            "decoding": decoding,
            "generation_meta": gmeta,
            "generated_at": created,
            "scores": dict(sorted(mine.get(gid, {}).items())),
            "imported_scores": dict(sorted(theirs.get(gid, {}).items())),
            "provenance": prov,
        }


def _atomic_text(path: Path, text_chunks) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in text_chunks:
                f.write(chunk)
                n += 1
        os.replace(tmp, path)  # nothing half-written if it fails midway
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _jsonl(records) -> Iterator[str]:
    for r in records:
        yield json.dumps(r, ensure_ascii=False, default=str) + "\n"


def export_suite(
    ws: Workspace, suite: str, *, models: list[str] | None = None, fmt: str = "jsonl", out: str | None = None
) -> dict:
    """Write the export; returns {format, out, records, models}. JSONL without `out` is for the
    caller to print (`records` holds them)."""
    if fmt not in FORMATS:
        raise BadInput("--format", f"unknown format '{fmt}' (expected {', '.join(FORMATS)})")
    records = list(export_records(ws, suite, models))
    names = sorted({r["model"] for r in records})
    summary = {"suite": suite, "format": fmt, "out": out, "records": len(records), "models": names}
    if fmt == "jsonl":
        if out is None:
            summary["lines"] = list(_jsonl(records))
        else:
            _atomic_text(Path(out), _jsonl(records))
        return summary
    if out is None:
        raise BadInput("--out", f"--format {fmt} writes a folder: give it with --out")
    if fmt == "hf":
        _save_hf(records, Path(out))
        return summary
    # AlpacaEval: a model_outputs.json per model (instruction, output, generator, dataset), what
    # `alpaca_eval --model_outputs` judges.
    files = []
    for m in names:
        rows = [
            {"instruction": r["item"]["prompt"], "output": r["output"], "generator": m, "dataset": r["item"]["task"]}
            for r in records
            if r["model"] == m
        ]
        path = Path(out) / _safe(m) / "model_outputs.json"
        _atomic_text(path, [json.dumps(rows, ensure_ascii=False, indent=2)])
        files.append(str(path))
    summary["files"] = files
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _save_hf(records: list[dict], out: Path) -> None:
    """A `datasets` save_to_disk folder: one row per record, scores as float columns (`score:M`,
    `imported:tool:M`; null where not scored), decoding and metadata as JSON text so that every
    row has the same schema."""
    import datasets

    metrics = sorted({m for r in records for m in r["scores"]})
    imported = sorted({m for r in records for m in r["imported_scores"]})
    rows = []
    for r in records:
        it = r["item"]
        row = {
            "suite": r["suite"],
            "kind": r["kind"],
            "idx": it["idx"],
            "key": it["key"],
            "task": it["task"],
            "prompt": it["prompt"],
            "gold": [str(x) for x in it["gold"] or []],
            "choices": [str(x) for x in it["choices"] or []],
            "tests": it["tests"],
            "entry_point": it["entry_point"],
            "model": r["model"],
            "model_kind": r["model_kind"],
            "fingerprint": r["fingerprint"],
            "output": r["output"],
            "rendered_prompt": r["rendered_prompt"],
            "decoding": json.dumps(r["decoding"], ensure_ascii=False, sort_keys=True),
            "generation_meta": json.dumps(r["generation_meta"], ensure_ascii=False, sort_keys=True, default=str),
        }
        row.update({f"score:{m}": _num(r["scores"].get(m)) for m in metrics})
        row.update({f"imported:{m}": _num(r["imported_scores"].get(m)) for m in imported})
        rows.append(row)
    features = datasets.Features(
        {
            **{k: datasets.Value("string") for k in rows[0] if not k.startswith(("score:", "imported:"))},
            "idx": datasets.Value("int64"),
            "gold": datasets.Sequence(datasets.Value("string")),
            "choices": datasets.Sequence(datasets.Value("string")),
            **{k: datasets.Value("float64") for k in rows[0] if k.startswith(("score:", "imported:"))},
        }
    )
    ds = datasets.Dataset.from_list(rows, features=features)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        ds.save_to_disk(str(tmp))
        if out.exists():
            raise BadInput(out, "already exists (choose another --out, or remove it)")
        os.replace(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _num(v):
    return None if v is None else float(v)
