"""Workspace configuration: `mirage.toml` read with tomllib into a schema that rejects unknown keys.

Found nearest-first: an explicit file (flag), the workspace's `mirage.toml`, then the user's
config dir (`$XDG_CONFIG_HOME/mirage/config.toml`). Values from nearer files win. Environment
variables `MIRAGE_<SECTION>_<KEY>` override everything. Secrets never live here: an endpoint
names the environment variable that holds its key (`api_key_env`), never the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError

ENV_PREFIX = "MIRAGE_"


@dataclass
class Roles:
    teacher: str = "smollm2-135m-instruct"
    base: str = "gemma3-270m"
    imitation: list[str] = field(default_factory=list)
    judge: str = ""


@dataclass
class Defaults:
    # Tokenizer used to count tokens on import: "" = mirage's built-in fast approximate counter,
    # else a local tokenizer folder or tokenizer.json path.
    tokenizer: str = ""
    embedding_model: str = "all-MiniLM-L6-v2"
    coverage_threshold: float = 0.0  # 0 = the documented default in core.coverage
    max_new_tokens: int = 128
    kshot: int = 3
    # A local sequence-classification model folder (e.g. a toxic-bert download) for the
    # `toxicity` metric; "" = no toxicity scores unless a judge rates them.
    toxicity_model: str = ""
    judge_concurrency: int = 8  # judge requests in flight at once


@dataclass
class Config:
    roles: Roles = field(default_factory=Roles)
    defaults: Defaults = field(default_factory=Defaults)
    # action id -> key(s), e.g. {"app.search" = "ctrl+f"}; see tui/actions.py
    keys: dict[str, str] = field(default_factory=dict)


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "mirage" / "config.toml"


def _coerce(value, tp, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return {str(k): _coerce(v, typing.get_args(tp)[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(into: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
    return into


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None


def _env_overrides(environ) -> dict:
    out: dict = {}
    for section in dataclasses.fields(Config):
        tp = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(tp):
            continue
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            var = f"{ENV_PREFIX}{section.name.upper()}_{f.name.upper()}"
            if var not in environ:
                continue
            raw = environ[var]
            ftp = hints[f.name]
            try:
                if ftp is bool:
                    val = raw.lower() in ("1", "true", "yes", "on")
                elif ftp in (int, float):
                    val = ftp(raw)
                elif typing.get_origin(ftp) is list:
                    val = [s for s in raw.split(",") if s]
                else:
                    val = raw
            except ValueError:
                raise ConfigError(f"{var}: expected {ftp.__name__}, got {raw!r}") from None
            out.setdefault(section.name, {})[f.name] = val
    return out


def load(workspace_toml: Path | None = None, *, explicit: Path | None = None, environ=None) -> Config:
    """Read the config, farthest file first so nearer files override it."""
    environ = os.environ if environ is None else environ
    merged: dict = {}
    sources = [user_config_path(), workspace_toml, explicit]
    for path in sources:
        if path is None or not Path(path).is_file():
            continue
        data = _read(Path(path))
        try:
            _build(Config, data, "")  # validate each file on its own, so errors name it
        except ConfigError as e:
            raise ConfigError(f"{path}: {e.message}") from None
        _merge(merged, data)
    _merge(merged, _env_overrides(environ))
    return _build(Config, merged, "")


DEFAULT_TOML = """\
# mirage workspace configuration. Unknown keys are rejected.
# Secrets never go here: an endpoint names the environment variable that holds its key.

[roles]
teacher = "smollm2-135m-instruct"   # served on 127.0.0.1 and called through the openai client
base = "gemma3-270m"                # a pretrained (not instruction-tuned) base
imitation = []                      # adapters; finetunes add theirs

[defaults]
tokenizer = ""                      # "" = built-in fast counter; or a tokenizer folder / tokenizer.json
embedding_model = "all-MiniLM-L6-v2"
max_new_tokens = 128
kshot = 3

[keys]
# action id = "key", e.g. "app.search" = "ctrl+f"
"""
