"""Compare a thumbnail Vigie rendered with the source image as pydicom
renders it: Modality LUT, then the file's VOI (pydicom's apply_voi_lut),
scaled to 8 bits, resized with PIL to the thumbnail's size.

usage: thumbnail_check.py SOURCE.dcm THUMBNAIL.png
Prints JSON: the sizes, the mean absolute difference (0-255) and the
correlation of the two.
"""

import json
import sys

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

ds = pydicom.dcmread(sys.argv[1])
thumb = np.asarray(Image.open(sys.argv[2]).convert("L"), dtype=np.float64)
pixels = apply_modality_lut(ds.pixel_array, ds)
values = apply_voi_lut(pixels, ds, prefer_lut=True).astype(np.float64)
if "WindowCenter" in ds:
    center = float(np.atleast_1d(ds.WindowCenter)[0])
    width = float(np.atleast_1d(ds.WindowWidth)[0])
    # PS3.3 C.11.2.1.2.1 (LINEAR), to [0, 1].
    values = np.clip(((pixels - (center - 0.5)) / (width - 1) + 0.5), 0, 1)
else:
    values = (values - values.min()) / max(values.max() - values.min(), 1e-9)
if ds.PhotometricInterpretation == "MONOCHROME1":
    values = 1 - values
reference = Image.fromarray(np.round(values * 255).astype(np.uint8))
reference = reference.resize((thumb.shape[1], thumb.shape[0]), Image.Resampling.BOX)
reference = np.asarray(reference, dtype=np.float64)
difference = float(np.mean(np.abs(reference - thumb)))
correlation = float(np.corrcoef(reference.ravel(), thumb.ravel())[0, 1])
print(json.dumps({
    "source": [int(ds.Rows), int(ds.Columns)],
    "thumbnail": [int(thumb.shape[0]), int(thumb.shape[1])],
    "mean_abs_difference": difference,
    "correlation": correlation,
}))
