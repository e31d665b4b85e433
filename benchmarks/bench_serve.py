"""The offline teacher server: 16 chat requests answered by `transformers serve` with continuous
batching (sent 16 at a time, as mirage does) against the same server without it (one at a time),
and the batched server's peak memory.

Both servers run the packaged SmolLM2-135M-Instruct, are started by core.models.serving exactly as the
demo starts its teacher, and answer the same 16 prompts greedily (max 48 new tokens) through the
`openai` client; one warm-up request first. Median of `--runs` rounds; the servers alternate.

    python benchmarks/bench_serve.py [--runs 3] [--requests 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MODEL = "smollm2-135m-instruct"


def _answers(client, model_id: str, prompts: list[str], concurrency: int) -> tuple[float, list[str]]:
    def ask(p: str) -> str:
        r = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": p}], max_tokens=48, temperature=0
        )
        return r.choices[0].message.content

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(ask, prompts))
    return time.perf_counter() - t0, out


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    args = ap.parse_args()

    from core.models import registry as models
    from core.models import serving
    from core.runtime import progress
    from core.store.workspace import Workspace

    prompts = [f"Tell me one fact about the number {i}." for i in range(args.requests)]
    with tempfile.TemporaryDirectory() as root:
        ws = Workspace.init(Path(root) / "ws")
        servers, started = {}, []
        try:
            for batched in (True, False):
                server = progress.run(serving.start(ws, MODEL, continuous_batching=batched))
                started.append(server)
                name = serving.register_endpoint(ws, server, f"teacher-{'cb' if batched else 'plain'}")
                client, model_id = models.openai_client(ws, name)
                client.chat.completions.create(
                    model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
                )
                servers[batched] = (server, client, model_id)
            times = {True: [], False: []}
            answers = {}
            for r in range(args.runs):
                for batched in (True, False) if r % 2 == 0 else (False, True):
                    server, client, model_id = servers[batched]
                    dt, out = _answers(client, model_id, prompts, server.concurrency)
                    times[batched].append(dt)
                    answers[batched] = out
            peak = _peak_rss_mb(servers[True][0].pid)
        finally:
            for server in started:
                serving.stop(ws, server)
            ws.close()
    same = sum(a == b for a, b in zip(answers[True], answers[False]))
    cb, plain = statistics.median(times[True]), statistics.median(times[False])
    print(
        json.dumps(
            {
                "name": f"serve_{args.requests}_answers_seconds",
                "value": round(cb, 2),
                "unit": "s",
                "baseline": "transformers serve, one request at a time",
                "baseline_value": round(plain, 2),
                "ratio": round(cb / plain, 3),
                "runs": [round(t, 2) for t in times[True]],
                "baseline_runs": [round(t, 2) for t in times[False]],
                "identical_answers": f"{same}/{len(prompts)}",
            }
        )
    )
    print(
        json.dumps(
            {
                "name": "serve_batched_peak_rss",
                "value": round(peak, 1),
                "unit": "MB",
                "baseline": "limit",
                "baseline_value": 4096.0,
                "ratio": round(peak / 4096.0, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
