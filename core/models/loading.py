"""Loading local weights: the device, tokenizers, chat templates, causal LMs and PEFT adapters.

Everything here works on folders; which folder a registered model has is its kind's business
(core.models.kinds). torch and transformers are imported only when a model is actually loaded.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

from core.errors import ModelError


@contextlib.contextmanager
def peft_quietly():
    """peft reads transformers' deprecated `is_gradient_checkpointing` alias when it wraps a model:
    its FutureWarning, printed into mirage's output, not something a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        yield


def has_chat_template(folder_or_tokenizer) -> bool:
    """Whether a model folder (its template files or tokenizer_config.json) or a loaded tokenizer
    carries a chat template."""
    if not isinstance(folder_or_tokenizer, (str, Path)):
        return bool(getattr(folder_or_tokenizer, "chat_template", None))
    folder = Path(folder_or_tokenizer)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def pick_device(device: str | None) -> str:
    """`None` or "auto": the GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_dtype(dtype):
    """A torch dtype from its name ("bfloat16") or as given (None: the default)."""
    if isinstance(dtype, str):
        import torch

        return getattr(torch, dtype)
    return dtype


def load_tokenizer(folder: Path):
    """A folder's tokenizer, with a pad token (batched generation pads)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_folder(folder: Path, *, dtype, device: str):
    """(model, tokenizer) from a HF safetensors folder, on `device`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers draws a "Loading weights" bar per load: in `mirage demo --headless` and in job
    # logs each load left a line of carriage-return frames among the study's own progress lines.
    hf_logging.disable_progress_bar()
    if dtype is None:  # bf16 where a GPU computes it natively; fp32 on a CPU (generation quality)
        on_gpu = str(device).startswith("cuda") and torch.cuda.is_available()
        dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except OSError as e:
        raise ModelError(f"{folder}: could not load the model ({str(e).splitlines()[0]})") from None
    model.to(device)
    model.eval()
    return model, load_tokenizer(folder)


def load_adapter(base_model, base_tokenizer, path: Path):
    """(model, tokenizer): a PEFT adapter on its loaded base, with the adapter's own tokenizer if it has one."""
    from peft import PeftModel

    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"{path}: adapter folder is gone")
    with peft_quietly():
        model = PeftModel.from_pretrained(base_model, str(path))
    tok = load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else base_tokenizer
    model.eval()
    return model, tok
