"""Where a step of mirage's LoRA loop spends its time: torch.profiler's table of operators by self
CPU time over a few steps, on the same data and settings as bench_finetune.py.

The per-operator shares the README and core/finetune/cpu.py quote (the attention kernel, the
dropout draws, the matmuls) come from this table.

Usage: python benchmarks/profile_finetune.py [--model smollm2-135m-instruct] [--steps 2]
       [--gradient-checkpointing on|off] [--torch-layers] [--rows 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_finetune as bf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=2, help="profiled steps (after 3 warm-up steps)")
    ap.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on")
    ap.add_argument("--torch-layers", action="store_true", help="SDPA and nn.Dropout (bench_finetune's ablation)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from core.finetune.trainer import Trainer
    from core.models import registry as models
    from core.store.workspace import Workspace

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp())
    bf._setup_workspace(root / "ws", 200, 24)
    ws = Workspace.open(root / "ws")
    folder = models.local_folder(ws, args.model, quiet=True)
    ws.close()
    plan_args = argparse.Namespace(
        ws=str(root / "ws"),
        folder=str(folder),
        batch=4,
        max_length=256,
        steps=3 + args.steps,
        gradient_checkpointing=args.gradient_checkpointing,
        worker="torch_layers" if args.torch_layers else "ours",
    )
    plan, _ = bf._plans(plan_args)
    trainer = Trainer(plan, root / "run")
    trainer.setup()
    for step in range(3):  # warm caches and allocators, as the benchmark skips its first step
        t0 = time.perf_counter()
        _, tokens, _, _ = trainer.step(step)
        print(f"warm-up step {step + 1}: {tokens / (time.perf_counter() - t0):.1f} tokens/s", file=sys.stderr)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(3, 3 + args.steps):
            trainer.step(step)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
