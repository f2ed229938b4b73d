#!/usr/bin/env bash
# Build `vigie` with candle's CUDA device (cargo feature `cuda`) into
# target/cuda/release/vigie. ONNX Runtime's CUDA provider needs no special
# build (it comes with the onnxruntime-gpu library chosen at run time); this
# is only for `backend = "candle"` on `device = "cuda[:N]"`.
#
# Everything comes from PyPI, pinned and hash-checked
# (scripts/cuda-13.0-requirements.txt): nvcc, NVVM, the CUDA headers and
# CCCL compile candle's kernels to PTX for CUDA_COMPUTE_CAP (default 90:
# Hopper; the driver JITs the PTX for newer GPUs); the runtime, cuBLAS,
# cuRAND and NVRTC are linked against. The driver library (libcuda.so.1)
# comes with the NVIDIA driver, never from a registry: on a build machine
# without one, the link uses a stub generated here from the driver
# functions cudarc declares, every one of which answers
# CUDA_ERROR_STUB_LIBRARY (34), as the stub in NVIDIA's toolkit does. The
# stub is a link-time input; at run time the binary needs the real driver
# (R580 or later) and the CUDA 13 libraries named by `ldd` on the loader
# path.
#
# Usage: scripts/build-cuda.sh          (needs scripts/setup.sh first)
#        CUDA_COMPUTE_CAP=89 scripts/build-cuda.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
say() { printf '[build-cuda] %s\n' "$*"; }
CUDA_DIR="$ROOT/.cache/vigie/cuda-13.0"
TOOLKIT="$CUDA_DIR/nvidia/cu13"
LINK="$CUDA_DIR/link"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$TOOLKIT/bin/nvcc" ]; then
  say "fetching CUDA 13.0 (compiler, headers, libraries) from PyPI"
  rm -rf "$CUDA_DIR" && mkdir -p "$CUDA_DIR/wheels"
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r scripts/cuda-13.0-requirements.txt -d "$CUDA_DIR/wheels"
  for w in "$CUDA_DIR"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$CUDA_DIR"
  done
  chmod +x "$TOOLKIT"/bin/* "$TOOLKIT"/nvvm/bin/*
  rm -rf "$CUDA_DIR/wheels"
fi
"$TOOLKIT/bin/nvcc" --version | grep -q 'release 13.0' || { say "nvcc is not CUDA 13.0"; exit 1; }

# The link folder: unversioned names for the linker, and the driver.
rm -rf "$LINK" && mkdir -p "$LINK"
for lib in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
  ln -s "$TOOLKIT/lib/lib${lib%%:*}.so.${lib#*:}" "$LINK/lib${lib%%:*}.so"
done
CUDARC=$(cargo metadata --format-version 1 --locked --features vigie-server/cuda \
  | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
DRIVER_SYS="$(dirname "$CUDARC")/src/driver/sys/mod.rs"
if ldconfig -p | grep -q 'libcuda\.so\.1 '; then
  say "linking against this machine's NVIDIA driver"
  ln -s "$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')" "$LINK/libcuda.so"
else
  say "no NVIDIA driver here: linking against a generated stub of libcuda.so.1"
  grep -oP '^pub unsafe fn \Kcu\w+' "$DRIVER_SYS" | sort -u \
    | awk '{print "int " $1 "(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }"}' > "$LINK/cuda_stub.c"
  [ -s "$LINK/cuda_stub.c" ] || { say "no driver functions found in $DRIVER_SYS"; exit 1; }
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"
fi

say "building vigie with the cuda feature (compute capability $CUDA_COMPUTE_CAP)"
PATH="$TOOLKIT/bin:$PATH" CUDA_HOME="$TOOLKIT" CUDA_PATH="$TOOLKIT" CUDA_ROOT="$TOOLKIT" \
  RUSTFLAGS="-L native=$LINK ${RUSTFLAGS:-}" \
  cargo build --release --locked -p vigie-server --features cuda --bin vigie --target-dir target/cuda
say "built target/cuda/release/vigie; it needs at run time:"
ldd target/cuda/release/vigie | grep -E 'cuda|cublas|curand|nvrtc' || true

# Check what this machine can check: with a GPU, candle runs a demo study on
# it; without one, asking for it is the typed error, not a crash or a CPU
# fall-back (the stub stands in for a driver that finds no usable GPU).
DEMO=$(find .cache/vigie/demo/dicom -name '*.dcm' 2>/dev/null | sort | head -n 1)
[ -n "$DEMO" ] || { say "no demo study (run scripts/setup.sh) : nothing checked"; exit 0; }
RUN_LIBS="$TOOLKIT/lib"
if [ -e "$LINK/cuda_stub.c" ]; then
  mkdir -p "$LINK/run" && ln -sf ../libcuda.so "$LINK/run/libcuda.so.1"
  RUN_LIBS="$LINK/run:$RUN_LIBS"
  set +e
  out=$(LD_LIBRARY_PATH="$RUN_LIBS" VIGIE__INFERENCE__DEVICE=cuda:0 target/cuda/release/vigie infer --backend candle "$DEMO" 2>&1)
  code=$?
  set -e
  if [ $code -ne 0 ] && grep -q 'candle-cuda is unavailable' <<<"$out" && grep -q CUDA_ERROR_STUB_LIBRARY <<<"$out"; then
    say "checked without a GPU: candle on cuda:0 is refused at model load (exit $code): $out"
  else
    say "UNEXPECTED without a GPU (exit $code): $out"; exit 1
  fi
else
  LD_LIBRARY_PATH="$RUN_LIBS:${LD_LIBRARY_PATH:-}" VIGIE__INFERENCE__DEVICE=cuda:0 \
    target/cuda/release/vigie infer --backend candle "$DEMO" | tee "$LINK/check.txt"
  grep -q 'candle / candle-cuda' "$LINK/check.txt" || { say "candle did not run on cuda:0"; exit 1; }
  say "checked on the GPU: candle ran a demo study on cuda:0"
fi
