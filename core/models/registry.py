"""The model registry: the named entries of a workspace, resolved to a kind and a ResolvedModel.

An entry is {name, kind, spec, created_at}; the packaged models (core.models.packaged) are entries
in every workspace without registration. `resolve(ws, name)` looks a name up once and returns the
object the rest of core passes on; the by-name functions below are for callers that need one thing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import BadInput, NotFound
from core.models.kinds import ModelKind, ResolvedModel, kind_of
from core.models.packaged import PACKAGED
from core.store.workspace import Workspace, dumps, now

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+/-]*$")


def known_names(ws: Workspace) -> list[str]:
    """Every model name of the workspace, packaged ones included."""
    return sorted(set(PACKAGED) | {r["name"] for r in ws.db.query("select name from models")})


def get_model(ws: Workspace, name: str) -> dict:
    """The registry entry {name, kind, spec, created_at}; packaged names resolve everywhere."""
    rows = list(ws.db.query("select * from models where name = ?", [name]))
    if rows:
        row = dict(rows[0])
        row["spec"] = json.loads(row["spec"] or "{}")
        return row
    if name in PACKAGED:
        return {"name": name, "kind": "packaged", "spec": {"package": PACKAGED[name]["package"]}, "created_at": None}
    raise NotFound(f"no model '{name}' (known: {', '.join(known_names(ws))}; add one with `mirage models add`)")


def resolve(ws: Workspace, name: str) -> ResolvedModel:
    """The model `name` looked up once, with its kind (NotFound for an unknown name)."""
    entry = get_model(ws, name)
    return ResolvedModel(ws, entry, kind_of(entry["kind"]), resolve)


def model_kind(ws: Workspace, name: str) -> ModelKind:
    """The kind object of a registered (or packaged) model."""
    return kind_of(get_model(ws, name)["kind"])


def register(ws: Workspace, name: str, kind: str, spec: dict | None = None, *, replace: bool = False) -> dict:
    """Add (or with `replace`, update) a model entry. The spec never holds a secret."""
    if not name or not _NAME.match(name):
        raise BadInput(
            "models add", f"invalid model name '{name}' (letters, digits and ._@:+/- ; no spaces)", field="name"
        )
    k = kind_of(kind)
    k.check_name(name)
    spec = k.validate(ws, name, {key: v for key, v in dict(spec or {}).items() if v is not None}, resolve)
    with ws.transaction():
        exists = ws.db.execute("select 1 from models where name = ?", [name]).fetchone()
        if exists and not replace:
            raise BadInput(
                "models add", f"model '{name}' already exists (remove it with `mirage models rm {name}`)", field="name"
            )
        if exists:
            ws.db.execute("update models set kind = ?, spec = ? where name = ?", [kind, dumps(spec), name])
        else:
            ws.db.execute(
                "insert into models (name, kind, spec, created_at) values (?, ?, ?, ?)",
                [name, kind, dumps(spec), now()],
            )
    return get_model(ws, name)


def unregister(ws: Workspace, name: str) -> None:
    """Remove a registry entry (its cached generations stay, keyed by fingerprint)."""
    if name in PACKAGED and not ws.db.execute("select 1 from models where name = ?", [name]).fetchone():
        raise BadInput("models rm", f"'{name}' is packaged and cannot be removed")
    get_model(ws, name)
    ws.db.execute("delete from models where name = ?", [name])


def list_models(ws: Workspace) -> list[dict]:
    """Rows for `mirage ls models`: name, kind, size, chat_template, location, generations."""
    names = list(PACKAGED) + [r["name"] for r in ws.db.query("select name from models order by name")]
    resolved = {n: resolve(ws, n) for n in names}
    counts = {r["model"]: r["n"] for r in ws.db.query("select model, count(*) as n from generations group by model")}
    out = []
    for name in sorted(resolved, key=lambda n: (n not in PACKAGED, n)):
        rm = resolved[name]
        row = {"name": name, "kind": rm.kind.name, **rm.describe(), "generations": counts.get(name, 0)}
        if rm.kind.on_base:
            row["base"] = rm.spec.get("base")
        out.append(row)
    return out


# -- by name: one lookup each -------------------------------------------------------------------------
def fingerprint(ws: Workspace, name: str) -> str:
    """A short hash that changes when the model's weights, adapter or endpoint change."""
    return resolve(ws, name).fingerprint


def prompt_style(ws: Workspace, name: str) -> str:
    """The model's default prompt style: "chat" or "completion" (packaged base models: completion)."""
    return resolve(ws, name).prompt_style


def local_folder(ws: Workspace, name: str, *, quiet: bool = False) -> Path:
    """A HF safetensors folder for `name` (a packaged GGUF converted once, with a progress bar)."""
    return resolve(ws, name).local_folder(quiet=quiet)


def load_causal_lm(ws: Workspace, name: str, *, dtype=None, device: str | None = "auto", quiet: bool = True):
    """(model, tokenizer) for a local model or an adapter on its base (peft), in eval mode."""
    return resolve(ws, name).load(dtype=dtype, device=device, quiet=quiet)


def openai_client(ws: Workspace, name: str, *, timeout: float | None = None):
    """(openai.OpenAI, model_id) for an endpoint model; the key comes from the named env var."""
    return resolve(ws, name).client(timeout=timeout)


def lineage(ws: Workspace, name: str) -> dict:
    """What an adapter was trained from (base, data, tokens, run), as its finetune recorded it; {} for
    any other model or an unknown name."""
    row = ws.db.execute("select spec from models where name = ?", [name]).fetchone()
    return (json.loads(row[0] or "{}").get("lineage") or {}) if row else {}


def adapters_of(ws: Workspace, base: str) -> list[str]:
    """Adapters whose lineage names `base`, oldest first: a base's imitation models (served ones too)."""
    rows = ws.db.execute("select name, spec from models where kind in ('adapter', 'openai') order by id").fetchall()
    return [n for n, spec in rows if (json.loads(spec or "{}").get("lineage") or {}).get("base") == base]


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def folder_hub_id(folder: Path) -> str | None:
    """The hub id a HF folder was saved from (config.json `_name_or_path`), when it is one."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = str(cfg.get("_name_or_path") or "")
    return name if _HUB_ID.match(name) and not Path(name).expanduser().exists() else None


def hub_id(ws: Workspace, name: str) -> str | None:
    """The Hugging Face hub id of a model's weights (packaged models know theirs), else None.

    A portable adapter names this as its base, never a local folder another machine lacks.
    """
    rm = resolve(ws, name)
    if rm.kind.name == "packaged":
        return PACKAGED[name].get("hub_id")
    if rm.kind.name == "hf":
        return rm.spec.get("id") or folder_hub_id(Path(rm.spec["path"]))
    if rm.kind.name == "adapter":
        return hub_id(ws, rm.spec["base"])
    return None


def served_adapter(ws: Workspace, ref: str) -> dict:
    """The endpoint fields of a served copy of a finetune's adapter: `ref` is the adapter model's
    name, or the run's job id or name. The lineage is the run's, so the report reads the endpoint
    as an imitation model of the run's base; the content hash keys its outputs."""
    from core.models.kinds import adapter_content_hash

    name = ref
    row = ws.db.execute("select kind from models where name = ?", [ref]).fetchone()
    if not row or row[0] != "adapter":
        jobs = ws.db.execute(
            "select id, name from jobs where kind = 'finetune' and (name = ? or cast(id as text) = ?) order by id desc",
            [ref, ref],
        ).fetchall()
        if not jobs:
            raise NotFound(f"no adapter model or finetune run '{ref}' (see `mirage ls runs`)")
        name = jobs[0][1]
    try:
        entry = get_model(ws, name)
    except NotFound:
        raise NotFound(f"run '{ref}' has no adapter yet (it registers one when it is done)") from None
    if entry["kind"] != "adapter":
        raise BadInput("--adapter-of", f"'{name}' is a {entry['kind']} model, not an adapter", field="adapter_of")
    folder = Path(entry["spec"]["path"])
    if not (folder / "adapter_config.json").is_file():
        raise NotFound(f"{folder}: the adapter folder of '{name}' is gone")
    lineage = {**(entry["spec"].get("lineage") or {}), "base": entry["spec"]["base"], "served_adapter": name}
    return {"adapter_of": name, "adapter_sha256": adapter_content_hash(folder), "lineage": lineage}
