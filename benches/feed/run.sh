#!/usr/bin/env bash
# Feed capacity of the hot loop: its throughput on a model that costs next
# to nothing (benches/feed/feed_model.py), with 1 to N decode threads, on
# the 17 demo studies. It is the most instances per second the decode and
# preprocessing stage can give a fast model (a GPU), and shows how it
# scales with decode threads.
# Usage: benches/feed/run.sh [ROUNDS] [MAX_DECODE_THREADS]   (after scripts/setup.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ROUNDS=${1:-20}
MAX=${2:-$(nproc)}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cargo build --release --locked -q -p vigie-benches --bin pipeline_throughput
.venv/bin/python benches/feed/feed_model.py models/brain-tumour-vgg16 "$OUT/feed"
for d in $(seq 1 "$MAX"); do
    VIGIE_BENCH_MODEL="$OUT/feed" ./target/release/pipeline_throughput "$ROUNDS" 1 "$OUT/tensors.f32" 1 "$d"
done | .venv/bin/python -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin]
one = rows[0]["pipeline_images_per_s"]
print(json.dumps([{
    "decode_threads": r["decode_threads"],
    "hot_loop_images_per_s": round(r["pipeline_images_per_s"], 1),
    "speedup_over_one_thread": round(r["pipeline_images_per_s"] / one, 3),
    "sequential_images_per_s": round(r["sequential_images_per_s"], 1),
    "model_only_images_per_s": round(r["session_only_images_per_s"], 1),
} for r in rows], indent=2))'
