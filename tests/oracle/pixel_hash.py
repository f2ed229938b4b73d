"""Test oracle: SHA-256 of a file's decoded stored pixel values with pydicom
(float32 little endian, frames x rows x columns x samples, C order).

Usage: pixel_hash.py [--min-max] FILE...   (one hex digest per line)

--min-max: of the pixels scaled to [0, 1] by each image's own minimum and
maximum (a package's `voi = { kind = "min_max" }`), as float32.
"""
import hashlib
import sys

import numpy as np
import pydicom

args = sys.argv[1:]
min_max = bool(args) and args[0] == "--min-max"
for path in args[1:] if min_max else args:
    pixels = pydicom.dcmread(path).pixel_array
    if min_max:
        pixels = pixels.astype(np.float64)
        low, high = pixels.min(), pixels.max()
        pixels = (pixels - low) / (high - low)
    print(hashlib.sha256(np.ascontiguousarray(pixels, dtype="<f4").tobytes()).hexdigest())
