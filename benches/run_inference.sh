#!/usr/bin/env bash
# Inference benchmark: Vigie's full pipeline vs bare Python onnxruntime on
# the same model, tensors and thread count, in one run (the baseline runs
# before and after Vigie and is averaged, to spread machine noise).
# Usage: benches/run_inference.sh [ROUNDS] [THREADS] [MAX_BATCH] [DECODE_THREADS]
# (after scripts/setup.sh). VIGIE_BENCH_MODEL: another package folder (e.g.
# models/candidates/brain-tumour-vgg16-int8).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
THREADS=${2:-$(nproc)}
MAX_BATCH=${3:-1}
DECODE_THREADS=${4:-1}
OUT=$(mktemp -d)
cargo build --release --locked -q -p vigie-benches --bin pipeline_throughput
PACKAGE=${VIGIE_BENCH_MODEL:-models/brain-tumour-vgg16}
# PIPELINE_BIN: another build of the harness (an earlier release, for
# before/after ratios), default the one built here.
PIPELINE_BIN=${PIPELINE_BIN:-./target/release/pipeline_throughput}
MODEL=$(ls "$PACKAGE"/*.onnx | head -n 1)
./target/release/pipeline_throughput 1 "$THREADS" "$OUT/tensors.f32" > /dev/null
py() { .venv/bin/python benches/baselines/ort_throughput.py "$MODEL" "$OUT/tensors.f32" "$ROUNDS" "$THREADS"; }
A=$(py)
V=$("$PIPELINE_BIN" "$ROUNDS" "$THREADS" "$OUT/tensors.f32" "$MAX_BATCH" "$DECODE_THREADS")
B=$(py)
.venv/bin/python - "$A" "$V" "$B" "$MODEL" <<'PY'
import json, sys
a, v, b = (json.loads(x) for x in sys.argv[1:4])
base = (a["images_per_s"] + b["images_per_s"]) / 2
ours = v["pipeline_images_per_s"]
print(json.dumps({
    "baseline_python_onnxruntime_images_per_s": round(base, 3),
    "vigie_pipeline_images_per_s": round(ours, 3),
    "vigie_session_only_images_per_s": round(v["session_only_images_per_s"], 3),
    "vigie_sequential_images_per_s": round(v["sequential_images_per_s"], 3),
    "max_batch": v["max_batch"],
    "decode_threads": v["decode_threads"],
    "model": sys.argv[4],
    "ratio_vigie_over_baseline": round(ours / base, 4),
    "pipeline_overhead_over_own_session_pct": round(100 * (v["session_only_images_per_s"] / ours - 1), 2),
    "vigie_p50_ms": round(v["pipeline_p50_ms"], 1),
    "vigie_p95_ms": round(v["pipeline_p95_ms"], 1),
    "images_per_side": v["images"], "threads": v["threads"],
}, indent=2))
PY
rm -rf "$OUT"
