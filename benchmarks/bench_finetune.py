"""Finetune throughput: mirage's LoRA loop against TRL's SFTTrainer on the same data, interleaved step by step.

Each contender runs in its own worker process (so peak memory is its own) and takes one optimizer
step when told to; the parent alternates them (the order flips every round) so the machine's load,
shared with other work, falls on both alike. Same examples (gpteacher codegen-instruct through the
base's chat template, or mirage's default template for a base without one), same assistant-only
labels, LoRA config, batch, max length, learning rate, schedule and number of steps. Final quality
is compared as the mean assistant-token loss of each trained adapter on the same held-out
examples, computed the same way (the model's own loss) in each worker.

Activation checkpointing is the same on both sides: on by default (TRL's SFTConfig default; mirage's
`--gradient-checkpointing`), `--gradient-checkpointing off` for both without it. Everything else on
TRL's side is its SFTConfig defaults.

Ablations of mirage's loop (each a worker too): `full_logits` (the model's own loss over the
whole vocabulary at every position, instead of chunked logits at label positions only),
`no_grouping` (shuffled batches instead of length-grouped ones) and `torch_layers` (SDPA attention
and torch's nn.Dropout, where mirage on a CPU picks eager attention for short sequences and cheaper
dropout masks, core/finetune/cpu.py; TRL runs with its defaults, SDPA and nn.Dropout) and
`peft_lora` (peft's own LoRA forward: fp32 adapter arithmetic on full-width activations, where
mirage on a CPU computes the adapters in the base's dtype on the rank-wide intermediate) and
`torch_norm` (autograd through the model's own RMSNorm ops, where mirage on a CPU gives frozen
norms a written-out backward).

Usage: python benchmarks/bench_finetune.py [--models smollm2-135m-instruct,gemma3-270m] [--steps 10]
       [--ablations full_logits,no_grouping,torch_layers,peft_lora,torch_norm]
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lines import emit  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "gpteacher" / "codegen-instruct.json"
PEAK_NOMINAL = 400e9  # bf16 matmul, 2 threads (DESIGN.md); measured again below


def _conversations(n: int) -> list[list[dict]]:
    rows = json.loads(DATA.read_text())[:n]
    out = []
    for r in rows:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": r["response"]}])
    return out


def _setup_workspace(root: Path, n_train: int, n_eval: int) -> None:
    import hashlib

    from core.store.workspace import Workspace, dumps, now

    ws = Workspace.init(root)
    convs = _conversations(n_train + n_eval)
    for name, part in (("train", convs[:n_train]), ("heldout", convs[n_train:])):
        ds = ws.db.execute(
            "insert into datasets (name, kind, format, source, created_at) values (?, 'imitation',"
            " 'alpaca', 'gpteacher', ?)",
            [name, now()],
        ).lastrowid
        for i, conv in enumerate(part):
            text = dumps(conv)
            ws.db.execute(
                "insert or ignore into examples (dataset_id, idx, conversation, user_text, assistant_text, n_tokens,"
                " content_hash) values (?, ?, ?, ?, ?, ?, ?)",
                [
                    ds,
                    i,
                    text,
                    conv[0]["content"],
                    conv[1]["content"],
                    len(text) // 4,
                    hashlib.sha256(text.encode()).hexdigest(),
                ],
            )
    ws.close()


# -- workers -----------------------------------------------------------------------------------------------
def _reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _peak_mb() -> float:
    """This worker's peak RSS so far. Read after each training step, so the held-out evaluation at
    the end (full-vocabulary logits, the same on both sides) does not count as training memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _eval_loss(model, plan_eval, device="cpu") -> float:
    """Mean assistant-token loss over the held-out set, with the model's own (full-logits) loss."""
    import torch

    from core.finetune import data as ft

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(plan_eval.sel.ids), 4):
            idx = list(range(s, min(s + 4, len(plan_eval.sel.ids))))
            ids, att, labels = ft.collate(plan_eval, idx, device)
            n = int((labels[:, 1:] != ft.IGNORE).sum())
            total += float(model(input_ids=ids, attention_mask=att, labels=labels).loss) * n
            count += n
    return total / count


def _plans(args):
    from core.finetune.config import make_config
    from core.finetune.trainer import make_plan
    from core.store.workspace import Workspace

    ws = Workspace.open(args.ws)
    common = dict(
        batch_size=args.batch,
        max_length=args.max_length,
        max_steps=args.steps,
        lr=2e-4,
        rank=8,
        alpha=16,
        dropout=0.05,
        target_modules="q_proj,v_proj",
        dtype="bf16",
        gradient_checkpointing=args.gradient_checkpointing == "on",
        # The benchmark holds out its own "heldout" dataset, the same for mirage and TRL.
        eval_fraction=0.0,
        # TRL's SFTTrainer clips at 1.0 too (TrainingArguments.max_grad_norm).
        max_grad_norm=1.0,
    )
    extra = {
        "ours": {},
        "full_logits": {"loss_impl": "full"},
        "no_grouping": {"group_by_length": False},
        # torch's own layers where mirage picks cheaper ones on a CPU (core/finetune/cpu.py)
        "torch_layers": {"attn_implementation": "sdpa", "cheap_dropout": False},
        # peft's own LoRA forward (fp32 adapter arithmetic on full-width activations)
        "peft_lora": {"lean_lora": False},
        # autograd's backward through the model's own RMSNorm ops
        "torch_norm": {"fused_norm": False},
        "trl": {},
    }[args.worker]
    plan = make_plan(ws, make_config(args.folder, "train", **common, **extra))
    plan_eval = make_plan(ws, make_config(args.folder, "heldout", **common))
    return plan, plan_eval


def worker_ours(args) -> None:
    import torch

    from core.finetune import data as ft
    from core.finetune.trainer import Trainer

    torch.set_num_threads(args.threads)
    plan, plan_eval = _plans(args)
    trainer = Trainer(plan, Path(tempfile.mkdtemp()))
    trainer.setup()
    _reply({"ready": True})
    step = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            t0 = time.perf_counter()
            loss, tokens, _, _ = trainer.step(step)
            dt = time.perf_counter() - t0
            mb = plan.step_batches(step)
            labels = sum(sum(1 for x in plan.sel.labels[i][1:] if x != ft.IGNORE) for b in mb for i in b)
            padded = sum(len(b) * max(len(plan.sel.ids[i]) for i in b) for b in mb)
            step += 1
            _reply(
                {
                    "seconds": dt,
                    "tokens": tokens,
                    "label_tokens": labels,
                    "padded_tokens": padded,
                    "loss": loss,
                    "peak_rss_mb": _peak_mb(),
                }
            )
        elif cmd == "eval":
            _reply({"eval_loss": _eval_loss(trainer.peft_model, plan_eval)})
        else:
            return


def worker_trl(args) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from core.finetune import data as ft

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    plan, plan_eval = _plans(args)
    ds = Dataset.from_dict(
        {
            "input_ids": plan.sel.ids,
            # TRL's own assistant-only path: it builds labels = -100 where assistant_masks == 0.
            "assistant_masks": [[int(x != ft.IGNORE) for x in lab] for lab in plan.sel.labels],
        }
    )
    base_collator = DataCollatorForLanguageModeling(pad_token_id=plan.tok.pad_token_id)
    last = {}

    def collator(examples):
        batch = base_collator(examples)
        last["tokens"] = int(batch["attention_mask"].sum())
        last["label_tokens"] = int((batch["labels"][:, 1:] != ft.IGNORE).sum())
        last["padded_tokens"] = int(batch["input_ids"].numel())
        return batch

    class TurnTaking(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if sys.stdin.readline().strip() != "step":
                control.should_training_stop = True
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.dt = time.perf_counter() - self.t0
            self.pending = True

        def on_log(self, a, state, control, logs=None, **kw):
            if getattr(self, "pending", False) and logs and "loss" in logs:
                self.pending = False
                _reply({"seconds": self.dt, "loss": logs["loss"], "peak_rss_mb": _peak_mb(), **last})

    model = AutoModelForCausalLM.from_pretrained(str(plan.folder), dtype=torch.bfloat16)
    out = tempfile.mkdtemp()
    cfg = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=-(-3 * args.steps // 100),
        max_steps=args.steps,
        bf16=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        max_length=args.max_length,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # SFTConfig's default is on (less memory, a recompute of the body in backward).
        gradient_checkpointing=args.gradient_checkpointing == "on",
    )
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=ds,
        processing_class=plan.tok,
        peft_config=lora,
        data_collator=collator,
        callbacks=[TurnTaking()],
    )
    _reply({"ready": True})
    trainer.train()
    for line in sys.stdin:
        if line.strip() == "eval":
            _reply({"eval_loss": _eval_loss(trainer.model, plan_eval)})
        else:
            return


# -- parent --------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, kind: str, args, folder: Path, ws: Path):
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        self.kind = kind
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--folder",
                str(folder),
                "--ws",
                str(ws),
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--max-length",
                str(args.max_length),
                "--threads",
                str(args.threads),
                "--gradient-checkpointing",
                args.gradient_checkpointing,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=args.worker_log,
            text=True,
            env=env,
        )

    def ask(self, cmd: str | None) -> dict:
        if cmd:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.kind} died")
            try:
                return json.loads(line)
            except ValueError:
                continue  # a library printed to stdout

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        self.proc.wait(timeout=120)


def measured_peak(threads: int) -> float:
    """bf16 matmul FLOP/s on this machine now (best of a few 2048^3 products)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t0))
    return best


def param_counts(folder: Path) -> tuple[int, int, int]:
    """(body params without embeddings, vocab x hidden of the output layer, LoRA params for r=8 q/v)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    emb = m.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in m.parameters())
    head = m.get_output_embeddings().weight
    body = total - emb - (0 if m.get_output_embeddings().weight is m.get_input_embeddings().weight else head.numel())
    text_cfg = getattr(cfg, "text_config", cfg)
    layers = text_cfg.num_hidden_layers
    d = text_cfg.hidden_size
    q_out = text_cfg.num_attention_heads * getattr(text_cfg, "head_dim", d // text_cfg.num_attention_heads)
    v_out = text_cfg.num_key_value_heads * getattr(text_cfg, "head_dim", d // text_cfg.num_attention_heads)
    lora = layers * 8 * ((d + q_out) + (d + v_out))
    return body, head.numel(), lora


def bench_model(model_name: str, args, root: Path) -> None:
    from core.models import registry as models
    from core.store.workspace import Workspace

    ws_path = root / f"ws-{model_name}"
    _setup_workspace(ws_path, args.train_examples, args.eval_examples)
    ws = Workspace.open(ws_path)
    folder = models.local_folder(ws, model_name, quiet=True)
    ws.close()
    kinds = ["ours", "trl"] + [a for a in args.ablations.split(",") if a]
    workers = {k: Worker(k, args, folder, ws_path) for k in kinds}
    for w in workers.values():
        w.ask(None)  # ready
    per_step: dict[str, list[dict]] = {k: [] for k in kinds}
    for step in range(args.steps):
        order = kinds if step % 2 == 0 else kinds[::-1]
        for k in order:
            per_step[k].append(workers[k].ask("step"))
            s = per_step[k][-1]
            print(
                f"[{model_name}] step {step + 1} {k}: {s['tokens']} tokens in {s['seconds']:.1f} s"
                f" ({s['tokens'] / s['seconds']:.1f}/s), loss {s['loss']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    finals = {k: workers[k].ask("eval") for k in kinds}
    for w in workers.values():
        w.close()

    body, head, lora = param_counts(folder)
    peak = measured_peak(args.threads)
    stats = {}
    for k in kinds:
        steps = per_step[k][1:]  # the first step warms caches and allocators
        rates = [s["tokens"] / s["seconds"] for s in steps]
        secs = sum(s["seconds"] for s in steps)
        toks = sum(s["tokens"] for s in steps)
        labels = sum(s["label_tokens"] for s in steps)
        # Useful FLOPs: frozen body forward + backward-to-input 4*P per token, LoRA 6*P_lora per
        # token, the output layer fwd + bwd 4*V*d only at positions that carry a label.
        flops = 4 * body * toks + 6 * lora * toks + 4 * head * labels
        stats[k] = {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "spread": (max(rates) - min(rates)) / statistics.median(rates),
            "mean_rate": toks / secs,
            "flops_rate": flops / secs,
            "pad_fraction": 1 - toks / sum(s["padded_tokens"] for s in steps),
            "last_train_loss": statistics.mean(s["loss"] for s in per_step[k][-3:]),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in per_step[k]),  # model load and training steps
            **finals[k],
        }
    tag = model_name
    o, t = stats["ours"], stats["trl"]
    common = {
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "threads": args.threads,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    emit(
        f"finetune_tokens_per_s[{tag}]",
        o["median"],
        "tokens/s",
        "trl_sft_trainer",
        t["median"],
        ours_range=[round(o["min"], 1), round(o["max"], 1)],
        trl_range=[round(t["min"], 1), round(t["max"], 1)],
        ours_pad_fraction=round(o["pad_fraction"], 3),
        trl_pad_fraction=round(t["pad_fraction"], 3),
        **common,
    )
    emit(
        f"finetune_heldout_loss[{tag}]",
        o["eval_loss"],
        "nats/token",
        "trl_sft_trainer",
        t["eval_loss"],
        ours_last_train_loss=round(o["last_train_loss"], 4),
        trl_last_train_loss=round(t["last_train_loss"], 4),
    )
    emit(f"finetune_peak_rss[{tag}]", o["peak_rss_mb"], "MB", "trl_sft_trainer", t["peak_rss_mb"])
    emit(
        f"finetune_matmul_peak_fraction[{tag}]",
        o["flops_rate"] / peak,
        "fraction",
        "trl_sft_trainer",
        t["flops_rate"] / peak,
        measured_peak_gflops=round(peak / 1e9, 1),
        formula="(4*P_body*tokens + 6*P_lora*tokens + 4*V*d*label_tokens) / s / measured bf16 matmul peak",
        P_body=body,
        V_d=head,
        P_lora=lora,
    )
    for k, what in (
        ("full_logits", "chunked_label_only_logits"),
        ("no_grouping", "length_grouped_batches"),
        ("torch_layers", "cpu_attention_and_dropout"),
        ("peft_lora", "lean_lora_forward"),
        ("torch_norm", "fused_rms_norm"),
    ):
        if k in stats:
            emit(
                f"finetune_gain_{what}[{tag}]",
                o["median"],
                "tokens/s",
                f"ours_without_{what}",
                stats[k]["median"],
                ablation_peak_rss_mb=round(stats[k]["peak_rss_mb"]),
                ours_peak_rss_mb=round(o["peak_rss_mb"]),
                ablation_pad_fraction=round(stats[k]["pad_fraction"], 3),
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-examples", type=int, default=200)
    ap.add_argument("--eval-examples", type=int, default=24)
    ap.add_argument(
        "--ablations",
        default="full_logits,no_grouping,torch_layers",
        help="variants of mirage's loop to measure too (comma-separated; empty for none)",
    )
    ap.add_argument(
        "--gradient-checkpointing",
        choices=["on", "off"],
        default="on",
        help="activation checkpointing on both sides (on: TRL's SFTConfig default)",
    )
    ap.add_argument("--worker")
    ap.add_argument("--folder")
    ap.add_argument("--ws")
    ap.add_argument(
        "--worker-log",
        type=argparse.FileType("a"),
        default=subprocess.DEVNULL,
        help="append the workers' stderr to this file",
    )
    args = ap.parse_args()
    if args.worker:
        (worker_trl if args.worker == "trl" else worker_ours)(args)
        return
    if not DATA.is_file():
        print(json.dumps({"name": "finetune", "skipped": f"no shared data at {DATA}"}))
        return
    with tempfile.TemporaryDirectory() as root:
        for m in args.models.split(","):
            bench_model(m.strip(), args, Path(root))


if __name__ == "__main__":
    main()
