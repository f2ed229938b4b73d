"""Make N distinct synthetic instances (one study, Explicit VR Little
Endian) for the ingest benchmark: MR 512x512 16-bit, about 512 KiB each
(KIND mr, the default), or CT 128x128 16-bit from pydicom's CT_small, about
40 KB each (KIND ct).
Usage: make_instances.py N OUT_DIR [KIND]"""
import os
import sys

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid, ExplicitVRLittleEndian


def main() -> None:
    n, out = int(sys.argv[1]), sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "mr"
    size = {"mr": 512, "ct": 128}[kind]
    os.makedirs(out, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm" if kind == "mr" else "CT_small.dcm"))
    rng = np.random.default_rng(7)
    study, series = generate_uid(), generate_uid()
    template.PatientName = "BENCH^SYNTHETIC"
    template.PatientID = "BENCH-0001"
    template.StudyInstanceUID = study
    template.SeriesInstanceUID = series
    template.Rows = template.Columns = size
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 12, 11
    template.PixelRepresentation = 0
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for i in range(n):
        sop = generate_uid()
        template.SOPInstanceUID = sop
        template.file_meta.MediaStorageSOPInstanceUID = sop
        template.InstanceNumber = i + 1
        template.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        template.save_as(os.path.join(out, f"{i:05d}.dcm"), enforce_file_format=True)


if __name__ == "__main__":
    main()
