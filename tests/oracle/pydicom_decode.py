"""Test oracle: decode DICOM files with pydicom and write what it finds.

Usage: pydicom_decode.py OUT_DIR FILE...
For each FILE (index i) writes OUT_DIR/i.json with shape, dtype and
photometric interpretation, or the error; OUT_DIR/i.stored.f64 with the
stored values (pydicom's pixel_array, YBR converted to RGB), and for
grayscale images OUT_DIR/i.modality.f64 with pydicom's Modality LUT output.
Used only by the tests, as an independent reference.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sys.argv[2:]):
        meta = {"file": name}
        try:
            ds = pydicom.dcmread(name)
            arr = ds.pixel_array
            meta.update(
                shape=list(arr.shape),
                dtype=str(arr.dtype),
                photometric=str(ds.get("PhotometricInterpretation", "")),
                frames=int(ds.get("NumberOfFrames", 1) or 1),
                samples=int(ds.SamplesPerPixel),
            )
            arr.astype("<f8").tofile(out / f"{i}.stored.f64")
            if int(ds.SamplesPerPixel) == 1 and "PALETTE" not in meta["photometric"]:
                apply_modality_lut(arr, ds).astype("<f8").tofile(out / f"{i}.modality.f64")
                meta["modality"] = True
        except Exception as exc:  # the oracle reports, the test judges
            meta["error"] = f"{type(exc).__name__}: {exc}"
        (out / f"{i}.json").write_text(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
