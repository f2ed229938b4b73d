"""A mixed DICOM corpus for `vigie validate import-dicom` tests.

usage: import_corpus.py DEMO_DATASET_DIR PYDICOM_DICOMDIR OUT_DIR

From the 17 demo MR studies (their dataset.toml gives the labels):
- each study's image rewritten, same UIDs and pixels, in one of six
  encodings in turn (implicit, explicit, deflated, big endian, RLE
  Lossless and JPEG-LS Lossless by DCMTK's dcmcrle and dcmcjpls), in nested folders,
  with an Accession Number, a Patient ID and a Study Date;
- studies 1 to 3 get a second MR series "LOCALIZER" (new UIDs, same
  pixels), study 4 a CT series: routing must choose;
- a second copy of study 5's file, a real DICOMDIR (pydicom's test
  file), a text file and an empty file mixed in;
- under OUT_DIR/extra (beside OUT_DIR/corpus): an 18th study with no label, whose Patient ID and
  Study Date are study 1's (a patient-keyed row then matches two studies).

Under OUT_DIR/seg (for the segmentation fixture model): a study of three
64x64 MR images with bright disks, a BINARY SEG (highdicom) of them (the
empty third frame omitted, as highdicom does), a FRACTIONAL SEG of a second
study of two images; the masks the SEGs encode as OUT_DIR/seg-expected/SOP_UID.u8 (one byte per pixel, row
major, 1 inside).

Prints a JSON description of every study on standard output.
"""

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

ENCODINGS = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGLSLossless,
]


def write(ds, path, syntax):
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax in (RLELossless, JPEGLSLossless):
        # DCMTK's encoders (pydicom 3.0's RLE encoder halves the segments
        # of 16-bit pixels with 8 bits stored).
        tmp = path.with_suffix(".tmp")
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(tmp, enforce_file_format=True)
        encoder = "dcmcrle" if syntax == RLELossless else "dcmcjpls"
        subprocess.run([encoder, str(tmp), str(path)], check=True)
        tmp.unlink()
    elif syntax == ExplicitVRBigEndian:
        # OW words are written as they are: swapped here (PS3.5 7.3).
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").byteswap().tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        pydicom.dcmwrite(
            path, ds, implicit_vr=False, little_endian=False, force_encoding=True
        )
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)


def demo(demo_dir, dicomdir, out):
    manifest = tomllib.loads((demo_dir / "dataset.toml").read_text())
    studies = []
    for i, study in enumerate(manifest["studies"]):
        n = i + 1
        ds = pydicom.dcmread(demo_dir / study["files"][0])
        ds.AccessionNumber = f"ACC{n:04d}"
        ds.PatientID = f"PAT{n:04d}"
        ds.StudyDate = f"202601{n:02d}"
        syntax = ENCODINGS[i % len(ENCODINGS)]
        series = [ds.SeriesInstanceUID]
        write(ds.copy(), out / f"site-{n % 3}" / f"case{n:02d}" / "image.dcm", syntax)
        if n <= 3:
            loc = pydicom.dcmread(demo_dir / study["files"][0])
            loc.AccessionNumber, loc.PatientID, loc.StudyDate = (
                ds.AccessionNumber,
                ds.PatientID,
                ds.StudyDate,
            )
            loc.SeriesInstanceUID = generate_uid()
            loc.SOPInstanceUID = generate_uid()
            loc.file_meta.MediaStorageSOPInstanceUID = loc.SOPInstanceUID
            loc.SeriesDescription = "LOCALIZER"
            loc.SeriesNumber = 99
            write(loc, out / f"site-{n % 3}" / f"case{n:02d}" / "loc" / "1.dcm", ExplicitVRLittleEndian)
            series.append(loc.SeriesInstanceUID)
        if n == 4:
            ct = pydicom.dcmread(demo_dir / study["files"][0])
            ct.AccessionNumber, ct.PatientID, ct.StudyDate = (
                ds.AccessionNumber,
                ds.PatientID,
                ds.StudyDate,
            )
            ct.Modality = "CT"
            ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ct.file_meta.MediaStorageSOPClassUID = ct.SOPClassUID
            ct.SeriesInstanceUID = generate_uid()
            ct.SOPInstanceUID = generate_uid()
            ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
            ct.SeriesDescription = "CT SCOUT"
            write(ct, out / f"site-{n % 3}" / f"case{n:02d}" / "ct.dcm", ExplicitVRLittleEndian)
            series.append(ct.SeriesInstanceUID)
        if n == 5:
            shutil.copy(
                out / f"site-{n % 3}" / f"case{n:02d}" / "image.dcm",
                out / "copy-of-case05.dcm",
            )
        studies.append(
            {
                "study_instance_uid": ds.StudyInstanceUID,
                "series_instance_uid": series[0],
                "sop_instance_uid": ds.SOPInstanceUID,
                "series": series,
                "accession_number": ds.AccessionNumber,
                "patient_id": ds.PatientID,
                "study_date": ds.StudyDate,
                "label": study["label"],
                "transfer_syntax": str(syntax),
                "demo_file": study["files"][0],
            }
        )
    shutil.copy(dicomdir, out / "DICOMDIR")
    (out / "notes.txt").write_text("Cases exported for the validation team.\n")
    (out / "site-0" / "empty.bin").write_bytes(b"")
    # The 18th study: no label, study 1's patient and date.
    extra = pydicom.dcmread(demo_dir / manifest["studies"][0]["files"][0])
    extra.StudyInstanceUID = generate_uid()
    extra.SeriesInstanceUID = generate_uid()
    extra.SOPInstanceUID = generate_uid()
    extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
    extra.AccessionNumber = "ACC9999"
    extra.PatientID = studies[0]["patient_id"]
    extra.StudyDate = studies[0]["study_date"]
    write(extra, out.parent / "extra" / "image.dcm", ExplicitVRLittleEndian)
    return studies, extra.StudyInstanceUID


def mr_images(n, rows, cols, centres):
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    images, masks = [], []
    yy, xx = np.mgrid[0:rows, 0:cols]
    for k in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SEG^TEST", f"SEG{n}", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260201", "120000", "1", f"SEGACC{n}"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.Manufacturer = "Vigie tests"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.EchoTrainLength = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        mask = np.zeros((rows, cols), dtype=bool)
        if centres[k] is not None:
            cy, cx, r = centres[k]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        pixels = np.where(mask, 3000, 200).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        images.append(ds)
        masks.append(mask)
    return images, np.stack(masks)


def seg_of(images, masks, kind):
    algorithm = hd.AlgorithmIdentificationSequence(
        name="manual", family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing"), version="1"
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="bright disk",
        segmented_property_category=hd.sr.CodedConcept("260787004", "SCT", "Physical object"),
        segmented_property_type=hd.sr.CodedConcept("BRIGHTDISK", "99VIGIE", "Bright disk"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    pixel_array = masks.astype(np.uint8) if kind == "BINARY" else masks.astype(np.float32) * 0.9
    return hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixel_array,
        segmentation_type=kind,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Vigie tests",
        manufacturer_model_name="import_corpus.py",
        software_versions="1",
        device_serial_number="1",
        max_fractional_value=255,
    )


def segs(out):
    out.mkdir(parents=True, exist_ok=True)
    expected = out.parent / "seg-expected"
    expected.mkdir()
    described = []
    for name, kind, centres in [
        ("binary", "BINARY", [(20, 30, 8), (40, 24, 10), None]),
        ("fractional", "FRACTIONAL", [(32, 32, 12), (16, 48, 6)]),
    ]:
        images, masks = mr_images(len(centres), 64, 64, centres)
        (out / name).mkdir(exist_ok=True)
        for k, ds in enumerate(images):
            ds.save_as(out / name / f"img{k}.dcm", enforce_file_format=True)
            (expected / f"{ds.SOPInstanceUID}.u8").write_bytes(masks[k].astype(np.uint8).tobytes())
        seg = seg_of(images, masks, kind)
        seg.save_as(out / name / "seg.dcm")
        described.append(
            {
                "study_instance_uid": images[0].StudyInstanceUID,
                "accession_number": images[0].AccessionNumber,
                "seg_sop_instance_uid": seg.SOPInstanceUID,
                "images": [ds.SOPInstanceUID for ds in images],
                "kind": kind,
            }
        )
    return described


def main():
    demo_dir, dicomdir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    studies, extra = demo(demo_dir, dicomdir, out / "corpus")
    print(json.dumps({"studies": studies, "extra_study": extra, "segs": segs(out / "seg")}))


if __name__ == "__main__":
    main()
