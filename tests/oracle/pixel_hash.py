"""Test oracle: SHA-256 of a file's decoded stored pixel values with pydicom
(float32 little endian, frames x rows x columns x samples, C order).

Usage: pixel_hash.py FILE...   (one hex digest per line)
"""
import hashlib
import sys

import numpy as np
import pydicom

for path in sys.argv[1:]:
    pixels = pydicom.dcmread(path).pixel_array
    print(hashlib.sha256(np.ascontiguousarray(pixels, dtype="<f4").tobytes()).hexdigest())
