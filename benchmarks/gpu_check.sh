#!/usr/bin/env bash
# End-to-end check on a GPU machine: a finetune on 2 GPUs through accelerate (and on 1, to compare),
# local generation with the adapter, and serving, on a tiny model the script builds. Prints what
# it measured. `--cpu` runs the same on a machine without a GPU (gloo, 2 processes).
#
#   bash benchmarks/gpu_check.sh [--cpu] [--procs N] [--steps S]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-python}
CPU=0 PROCS=2 STEPS=30
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --procs) PROCS="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    *) echo "usage: $0 [--cpu] [--procs N] [--steps S]" >&2; exit 2 ;;
  esac
  shift
done
WORK=$(mktemp -d -t mirage-gpu-check-XXXX)
export MIRAGE_CACHE="$WORK/cache" HF_HOME="$WORK/hf"
echo "work folder: $WORK"
$PY - <<EOF
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count())
if not $CPU and torch.cuda.device_count() < $PROCS:
    raise SystemExit(f"need $PROCS GPUs, torch sees {torch.cuda.device_count()} (use --cpu or --procs)")
EOF

# A tiny random Llama (the tests' recipe) and a dataset of 400 short conversations.
$PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from test_finetune import _conversation, build_tiny_model
work = Path(sys.argv[1])
build_tiny_model(work / "tiny")
rows = [{"messages": _conversation(i % 100)} for i in range(400)]
(work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
EOF
M="$PY -m core --workspace $WORK/ws"
$PY -m core init "$WORK/ws" >/dev/null
$M import data "$WORK/data.jsonl" --name arith >/dev/null
$M models add tiny --hf "$WORK/tiny" >/dev/null
COMMON="--base tiny --data arith --max-steps $STEPS --batch-size 8 --grad-accum 2 --lr 2e-3 --dropout 0 --target-modules all-linear --json --no-start"
ONE=$($M finetune $COMMON --name one | $PY -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
TWO=$($M finetune $COMMON --name two | $PY -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

# On GPUs through accelerate (NCCL); on CPUs accelerate's launcher starts one process unless
# mpirun is used, so the CPU fallback launches with torchrun (gloo), which runs the same code.
if [ $CPU = 1 ]; then
  launch() { torchrun --nproc_per_node "$1" -m core.finetune "$WORK/ws" "$2"; }
else
  launch() { accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes "$1" -m core.finetune "$WORK/ws" "$2"; }
fi
t0=$(date +%s.%N)
launch 1 "$ONE" >"$WORK/one.log" 2>&1
t1=$(date +%s.%N)
launch "$PROCS" "$TWO" >"$WORK/two.log" 2>&1
t2=$(date +%s.%N)

$PY - "$WORK" "$ONE" "$TWO" "$t0" "$t1" "$t2" "$PROCS" <<'EOF'
import json, sys, time
from pathlib import Path
from core.store.workspace import Workspace
from core.runtime import jobs
from core.models import registry, serving
from core.runtime import progress
work, one, two = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0, t1, t2, procs = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
ws = Workspace.open(work / "ws")

def summary(job_id):
    job = jobs.get_job(ws, job_id)
    evs = jobs.events(ws, job_id)
    evals = [e["data"]["eval_loss"] for e in evs if (e["data"] or {}).get("eval_loss") is not None]
    tps = [e["tokens_per_s"] for e in evs if e["tokens_per_s"]]
    device = next((e["message"] for e in evs if (e["message"] or "").startswith("training on")), "?")
    return job, evals, tps, device

for job_id, secs, n in ((one, t1 - t0, 1), (two, t2 - t1, procs)):
    job, evals, tps, device = summary(job_id)
    med = sorted(tps)[len(tps) // 2] if tps else 0
    print(f"finetune {n} process(es): status {job['status']}, {job['step']}/{job['total_steps']} steps, "
          f"final loss {job['loss']}, final eval_loss {evals[-1] if evals else None}, "
          f"median {med:.0f} tokens/s, {secs:.1f} s wall ({device})")
    if job["status"] != "done":
        raise SystemExit(f"job {job_id} failed: {job['error']} (log {work}/{'one' if n == 1 else 'two'}.log)")
j1, j2 = jobs.get_job(ws, one), jobs.get_job(ws, two)
print(f"final loss, {procs} processes vs 1: {j2['loss'] / j1['loss'] - 1:+.3%}")
acfg = json.loads((ws.artifacts / "adapters" / "two" / "adapter_config.json").read_text())
print("adapter base_model_name_or_path:", acfg["base_model_name_or_path"])

# Local generation with the adapter (bf16 on a GPU).
import torch
t = time.perf_counter()
model, tok = registry.load_causal_lm(ws, "two")
prompt = tok.apply_chat_template([{"role": "user", "content": "what is two plus three?"}], tokenize=False,
                                 add_generation_prompt=True)
ids = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
out = model.generate(**ids, max_new_tokens=12, do_sample=False)
text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
print(f"generate: {model.device} {next(model.parameters()).dtype}, {time.perf_counter() - t:.1f} s: {text!r}")

# Serving the base with `transformers serve` (bf16 on a GPU) and one chat request.
t = time.perf_counter()
server = progress.run(serving.start(ws, "tiny"))
try:
    from openai import OpenAI
    client = OpenAI(base_url=server.base_url, api_key="none")
    reply = client.chat.completions.create(model=server.model_id, messages=[{"role": "user", "content": "what is one plus one?"}], max_tokens=8)
    print(f"serve: up and answered in {time.perf_counter() - t:.1f} s on {'cuda' if torch.cuda.is_available() else 'cpu'}: "
          f"{reply.choices[0].message.content!r}")
finally:
    serving.stop(ws, server)
EOF
echo "gpu_check: ok ($WORK)"
