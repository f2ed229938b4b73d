#!/usr/bin/env bash
# Fresh machine to a running appliance job: set everything up, then run
# `vigie infer` on the 17 demo studies with the embedded defaults (demo model
# in models/, ONNX Runtime from the setup cache), write the DICOM result
# objects (SR + summary image) under .cache/vigie/demo/results, and print the
# summary (expected: labelled: 17/17 correct).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
exec ./target/release/vigie infer --dataset .cache/vigie/demo/dicom \
  --results .cache/vigie/demo/results --summary "$@"
