"""Batched against one-at-a-time local generation with the packaged SmolLM2-135M-Instruct, greedy.

64 QA prompts from samples/qa.jsonl in chat form, `max_new_tokens` 32, through mirage's own engine
(core.models.generation.run_requests: left padding, stop handling, the same code `mirage generate` runs).
The baseline is the same engine with batch size 1. Outputs must be identical (greedy); the line
says so in `identical`. Target: ratio (sequential time / batched time) >= 4.

A second line compares mirage's engine with plain HF batched `generate` on the same batches (the
same length-sorted order, batch size, left padding and tokenisation; model in its default dtype):
baseline `hf_generate_batched`, target ratio >= 1.5 with `identical` outputs. mirage's greedy path
(core.models.greedy) prefills the prompts' shared prefix (here the chat template's system prompt and
the instruction) once per batch instead of once per row. The two alternate
`--repeats` times and the medians are compared, so load from other processes hits both alike.

    python benchmarks/bench_generate.py [--n 64] [--batch-size 16] [--max-new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from core.models import generation
    from core.models import registry as models
    from core.runtime import progress
    from core.store.workspace import Workspace

    torch.set_num_threads(max(1, torch.get_num_threads()))
    questions = [
        json.loads(line)["question"]
        for line in (ROOT / "samples" / "qa.jsonl").read_text().splitlines()
        if line.strip()
    ]
    questions = (questions * (args.n // len(questions) + 1))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        name = "smollm2-135m-instruct"
        loaded = models.load_causal_lm(ws, name, quiet=False)
        tok = loaded[1]

        def requests():
            out = []
            for i, q in enumerate(questions):
                msgs = [{"role": "user", "content": f"Answer the question with a short answer.\nQuestion: {q}"}]
                r = generation.Request(
                    prompt=generation.render_chat(tok, msgs, name), style="chat", stop=[], messages=msgs, tag=i
                )
                r.decoding = generation.decoding_for(
                    r, max_new_tokens=args.max_new_tokens, temperature=0.0, seed=None, kshot=None
                )
                out.append(r)
            return out

        def run(batch_size: int, n: int | None = None) -> tuple[float, dict[int, str], int]:
            got: dict[int, str] = {}
            tokens = [0]

            def store(results):
                for r, text, meta in results:
                    got[r.tag] = text
                    tokens[0] += meta["new_tokens"]

            t0 = time.perf_counter()
            progress.run(
                generation.run_requests(ws, name, requests()[:n], store=store, batch_size=batch_size, loaded=loaded)
            )
            return time.perf_counter() - t0, got, tokens[0]

        def hf_batched() -> tuple[float, dict[int, str]]:
            """Plain transformers: `generate` on the batches mirage's engine makes, nothing else."""
            model_obj = loaded[0]
            tok.padding_side = "left"
            order = sorted(requests(), key=lambda r: len(r.prompt))
            got: dict[int, str] = {}
            t0 = time.perf_counter()
            for start in range(0, len(order), args.batch_size):
                batch = order[start : start + args.batch_size]
                enc = tok([r.prompt for r in batch], return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.inference_mode():
                    out = model_obj.generate(
                        **enc,
                        max_new_tokens=args.max_new_tokens,
                        do_sample=False,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=tok.pad_token_id,
                    )
                texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                for r, text in zip(batch, texts):
                    got[r.tag] = generation.truncate_at_stop(text, r.stop)
            return time.perf_counter() - t0, got

        run(min(args.batch_size, 4), 4)  # warm-up: the first call pays one-off costs
        hf_batched()
        mirage_times, hf_times = [], []
        for _ in range(max(1, args.repeats)):
            batched_s, batched, tokens = run(args.batch_size)
            hf_s, hf_out = hf_batched()
            mirage_times.append(batched_s)
            hf_times.append(hf_s)
        mirage_med = sorted(mirage_times)[len(mirage_times) // 2]
        hf_med = sorted(hf_times)[len(hf_times) // 2]
        hf_differing = [i for i in hf_out if hf_out[i] != batched.get(i)]
        print(
            json.dumps(
                {
                    "name": f"generate_vs_hf_batched_smollm2_{args.n}_prompts",
                    "value": round(mirage_med, 3),
                    "unit": "s",
                    "baseline": "hf_generate_batched",
                    "baseline_value": round(hf_med, 3),
                    "ratio": round(hf_med / mirage_med, 3),
                    "identical": not hf_differing and len(hf_out) == len(batched),
                    "differing": len(hf_differing),
                    "batch_size": args.batch_size,
                    "max_new_tokens": args.max_new_tokens,
                    "repeats": len(mirage_times),
                    "times_s": [round(t, 3) for t in mirage_times],
                    "baseline_times_s": [round(t, 3) for t in hf_times],
                    "dtype": str(next(loaded[0].parameters()).dtype).removeprefix("torch."),
                }
            ),
            flush=True,
        )
        seq_s, sequential, _ = run(1)
        ws.close()
    identical = batched == sequential
    differing = [i for i in batched if batched[i] != sequential.get(i)]
    print(
        json.dumps(
            {
                "name": f"generate_batched_smollm2_{args.n}_prompts",
                "value": round(batched_s, 2),
                "unit": "s",
                "baseline": "same prompts one at a time (batch size 1)",
                "baseline_value": round(seq_s, 2),
                "ratio": round(seq_s / batched_s, 2),
                "identical": identical,
                "differing": len(differing),
                "batch_size": args.batch_size,
                "new_tokens": tokens,
                "max_new_tokens": args.max_new_tokens,
            }
        ),
        flush=True,
    )
    if differing:
        i = differing[0]
        print(json.dumps({"example_difference": {"batched": batched[i], "sequential": sequential[i]}}), file=sys.stderr)


if __name__ == "__main__":
    main()
