"""Synthetic MR studies for the 0.1.0 upgrade fixture (no patient data).

Usage: make_studies.py OUT_DIR
Writes OUT_DIR/<study letter>/<n>.dcm: study A (2 instances), B (2), C (1),
32x32 16-bit images with a bright disk, UIDs fixed under 2.25 so that the
fixture is reproducible.
"""

import sys
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

ROOT = "2.25.31415926535897932384626433"
MR = "1.2.840.10008.5.1.4.1.1.4"


def instance(study: int, index: int) -> FileDataset:
    sop = f"{ROOT}.{study}.1.{index + 1}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = f"{ROOT}.{study}"
    ds.SeriesInstanceUID = f"{ROOT}.{study}.1"
    ds.PatientName = f"Synthetic^Upgrade{study}"
    ds.PatientID = f"SYNTHETIC-{study}"
    ds.StudyDate = "20261123"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"UPG{study}"
    ds.StudyID = str(study)
    ds.Modality = "MR"
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "synthetic upgrade fixture"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    y, x = np.mgrid[0:32, 0:32]
    disk = ((x - 16 - index) ** 2 + (y - 16) ** 2) < 64
    ds.PixelData = (disk * 3000 + 100).astype("<u2").tobytes()
    return ds


def main() -> None:
    out = Path(sys.argv[1])
    for study, letter, count in [(1, "A", 2), (2, "B", 2), (3, "C", 1)]:
        folder = out / letter
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            instance(study, i).save_as(folder / f"{i + 1}.dcm", enforce_file_format=True)


if __name__ == "__main__":
    main()
