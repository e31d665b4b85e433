"""Finetune checkpoints: adapter, optimizer, scheduler, RNG and data position in an atomic folder.

Each checkpoint is written to a temp folder and renamed, so a `kill -9` at any moment leaves the last
complete one; only the newest complete checkpoint is kept.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from core.errors import JobError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Write a folder's content into a temp sibling, fsync, then rename: it exists whole or not at all.

    Disk full (or a file size limit) mid-write removes the temp folder and raises a JobError; the
    previous checkpoint is untouched.
    """
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise JobError(
                f"disk full while writing {final} ({os.strerror(e.errno)}); the previous"
                " checkpoint is intact: free space, then `mirage jobs resume`"
            ) from None
        raise
    except RuntimeError as e:  # torch.save reports a failed write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        if "write" in str(e).lower() or "file" in str(e).lower():
            raise JobError(
                f"could not write {final} ({str(e).splitlines()[0]}); the previous checkpoint"
                " is intact: free space, then `mirage jobs resume`"
            ) from None
        raise


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and (p / "state.json").is_file())
    return ckpts[-1] if ckpts else None


def _trainable_state(peft_model) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in peft_model.named_parameters() if v.requires_grad}


def save_checkpoint(run_dir: Path, step: int, peft_model, optimizer, scheduler, extra: dict) -> Path:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(_trainable_state(peft_model), str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, sort_keys=True))

    final = run_dir / f"ckpt-{step:08d}"
    write_atomic_dir(final, write)
    for old in run_dir.glob("ckpt-*"):  # keep only the newest complete checkpoint
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, peft_model, optimizer, scheduler) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter.safetensors"))
    params = dict(peft_model.named_parameters())
    for k, v in weights.items():
        params[k].data.copy_(v.to(params[k].device))
    st = torch.load(ckpt / "optim.pt", weights_only=False)
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())
