"""Make N distinct synthetic MR instances (512x512, 16-bit, Explicit VR
Little Endian, about 512 KiB each, one study) for the ingest benchmark.
Usage: make_instances.py N OUT_DIR"""
import os
import sys

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid, ExplicitVRLittleEndian


def main() -> None:
    n, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    rng = np.random.default_rng(7)
    study, series = generate_uid(), generate_uid()
    template.PatientName = "BENCH^SYNTHETIC"
    template.PatientID = "BENCH-0001"
    template.StudyInstanceUID = study
    template.SeriesInstanceUID = series
    template.Rows = template.Columns = 512
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 12, 11
    template.PixelRepresentation = 0
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for i in range(n):
        sop = generate_uid()
        template.SOPInstanceUID = sop
        template.file_meta.MediaStorageSOPInstanceUID = sop
        template.InstanceNumber = i + 1
        template.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
        template.save_as(os.path.join(out, f"{i:05d}.dcm"), enforce_file_format=True)


if __name__ == "__main__":
    main()
