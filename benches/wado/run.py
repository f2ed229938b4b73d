"""WADO-RS frames and rendered images: `vigie serve` against Orthanc's
DICOMweb plugin (Debian's `orthanc-dicomweb`), in one run, on loopback.

Data, made here with pydicom: a 512x512 16-bit MR image, and a 300-slice
512x512 16-bit CT series, each stored native (Explicit VR Little Endian)
and RLE Lossless. Both servers hold the same files (STOW-RS to Vigie,
Orthanc's REST upload).

Measured, per server, as a viewer asks:
- MR, time to first frame: the very first `…/frames/1` request (cold),
  then as stored (`transfer-syntax=*`) and uncompressed, median of 20
  requests after one warm-up;
- MR rendered (`…/rendered`, JPEG), median of 20;
- CT series, time to first frame as a viewer opening it does it: series
  metadata, then the first slice's `frames/1` (one after the other),
  median of 5;
- CT series, all 300 frames as stored over 6 keep-alive connections (a
  browser holds 6 per origin on HTTP/1.1): wall time, median of 3;
- CT series thumbnail (Vigie; Orthanc's plugin serves no thumbnail) and
  one rendered slice, median of 10.
Prints one JSON object.

Usage: .venv/bin/python benches/wado/run.py [--vigie target/release/vigie]
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import shutil
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "bench-token-reader"
OPERATOR = "bench-token-operator"
AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
UNCOMPRESSED = 'multipart/related; type="application/octet-stream"'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image(modality, study, series, number, rows=512, columns=512, z=0.0):
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(prefix="2.25.")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = modality
    ds.PatientID, ds.PatientName = "BENCH", "Bench^Wado"
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    if modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    y, x = np.mgrid[0:rows, 0:columns]
    r = np.hypot(x - columns / 2, y - rows / 2)
    pixels = (np.clip(2000 - r * 6 + 40 * np.sin(x / 9.0 + number), 0, 4095)).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def make_data(work):
    sets = {}
    for syntax in ("native", "rle"):
        study = generate_uid(prefix="2.25.")
        mr = image("MR", study, generate_uid(prefix="2.25."), 1)
        ct_series = generate_uid(prefix="2.25.")
        cts = [image("CT", study, ct_series, i + 1, z=float(i)) for i in range(300)]
        files = []
        for i, ds in enumerate([mr] + cts):
            if syntax == "rle":
                ds.compress(RLELossless)
            path = work / f"{syntax}-{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        sets[syntax] = {
            "study": study,
            "mr": (mr.SeriesInstanceUID, mr.SOPInstanceUID),
            "ct_series": ct_series,
            "ct_first": cts[0].SOPInstanceUID,
            "ct": [ds.SOPInstanceUID for ds in cts],
            "files": files,
        }
    return sets


class Server:
    """A DICOMweb origin: base path and headers."""

    def __init__(self, name, port, root, headers):
        self.name, self.port, self.root, self.headers = name, port, root, headers

    def get(self, path, accept=None, connection=None):
        own = connection is None
        c = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = dict(self.headers)
        if accept:
            headers["Accept"] = accept
        c.request("GET", self.root + path, headers=headers)
        r = c.getresponse()
        body = r.read()
        if own:
            c.close()
        if r.status != 200:
            raise RuntimeError(f"{self.name} GET {path}: {r.status} {body[:200]!r}")
        return body


def timed(f, repeat):
    """Median of `repeat` runs in ms, after one warm-up run."""
    f()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def start_vigie(binary, work):
    http_port, dicom = free_port(), free_port()
    import hashlib
    tokens = "\n".join(
        f'[[http.tokens]]\nname = "{n}"\nrole = "{r}"\nsha256 = "{hashlib.sha256(t.encode()).hexdigest()}"'
        for n, r, t in (("bench-reader", "reader", TOKEN), ("bench-operator", "operator", OPERATOR)))
    config = work / "vigie.toml"
    config.write_text(f"""
[appliance]
id = "bench"
[inference]
models_dir = "{ROOT / 'models'}"
onnxruntime_library = "{ROOT / '.cache/vigie/onnxruntime/libonnxruntime.so.1.31.1'}"
[dicom]
bind = "127.0.0.1"
[http]
bind = "127.0.0.1"
max_stow_mib = 2048
{tokens}
[storage]
min_free_mib = 0
[log]
level = "warn"
# No analysis during the measurement: a rule no study matches.
[[routing.rules]]
name = "none"
modalities = ["XX"]
""")
    proc = subprocess.Popen([str(binary), "serve", "--config", str(config),
                             "--data-dir", str(work / "vigie-data"),
                             "--dicom-port", str(dicom), "--http-port", str(http_port)],
                            stdout=subprocess.DEVNULL, stderr=open(work / "vigie.log", "w"))
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2):
                return proc, http_port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("vigie did not start")


def start_orthanc(work):
    http_port, dicom = free_port(), free_port()
    config = ((ROOT / "tests/peers/orthanc-dicomweb.json").read_text()
              .replace("@STORAGE@", str(work / "orthanc"))
              .replace("@HTTP_PORT@", str(http_port))
              .replace("@DICOM_PORT@", str(dicom))
              .replace("@VIGIE_URL@", "http://127.0.0.1:9/dicomweb/")
              .replace("@VIGIE_TOKEN@", "unused"))
    (work / "orthanc.json").write_text(config)
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=2):
                return proc, http_port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("Orthanc did not start")


def stow(port, files):
    boundary = "BenchBoundary42"
    for i in range(0, len(files), 50):
        body = b""
        for f in files[i:i + 50]:
            body += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
            body += pathlib.Path(f).read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        c.request("POST", "/dicomweb/studies", body=body, headers={
            "Authorization": f"Bearer {OPERATOR}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"STOW-RS: {r.status}")


def upload_orthanc(port, files):
    for f in files:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/instances", body=pathlib.Path(f).read_bytes())
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"Orthanc upload: {r.status}")


def measure(server, data):
    study = data["study"]
    mr_series, mr_sop = data["mr"]
    mr = f"/studies/{study}/series/{mr_series}/instances/{mr_sop}"
    ct = f"/studies/{study}/series/{data['ct_series']}"
    first = f"{ct}/instances/{data['ct_first']}"
    t0 = time.perf_counter()
    server.get(f"{mr}/frames/1", AS_STORED)
    cold = round((time.perf_counter() - t0) * 1000, 2)
    out = {
        "mr_first_frame_cold_ms": cold,
        "mr_first_frame_as_stored_ms": timed(lambda: server.get(f"{mr}/frames/1", AS_STORED), 20),
        "mr_first_frame_uncompressed_ms": timed(lambda: server.get(f"{mr}/frames/1", UNCOMPRESSED), 20),
        "mr_rendered_jpeg_ms": timed(lambda: server.get(f"{mr}/rendered", "image/jpeg"), 20),
        "ct_series_first_frame_ms": timed(
            lambda: (server.get(f"{ct}/metadata", "application/dicom+json"),
                     server.get(f"{first}/frames/1", AS_STORED)), 5),
        "ct_slice_rendered_jpeg_ms": timed(lambda: server.get(f"{first}/rendered", "image/jpeg"), 10),
    }

    def all_frames():
        # Six keep-alive connections, as a browser holds per origin.
        local = threading.local()

        def one(sop):
            if not hasattr(local, "c"):
                local.c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            return len(server.get(f"{ct}/instances/{sop}/frames/1", AS_STORED, local.c))
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            return sum(pool.map(one, data["ct"]))
    out["ct_series_all_frames_6_connections_ms"] = timed(all_frames, 3)
    try:
        out["ct_series_thumbnail_ms"] = timed(lambda: server.get(f"{ct}/thumbnail", "image/jpeg"), 10)
    except RuntimeError as e:
        out["ct_series_thumbnail_ms"] = None
        out["ct_series_thumbnail_note"] = str(e)[:120]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vigie", default=str(ROOT / "target/release/vigie"))
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vigie-wado-bench-"))
    data = make_data(work)
    vigie, vigie_port = start_vigie(args.vigie, work)
    orthanc, orthanc_port = start_orthanc(work)
    try:
        for d in data.values():
            stow(vigie_port, d["files"])
            upload_orthanc(orthanc_port, d["files"])
        servers = [
            Server("vigie", vigie_port, "/dicomweb", {"Authorization": f"Bearer {TOKEN}"}),
            Server("orthanc", orthanc_port, "/dicom-web", {}),
        ]
        result = {"orthanc_version": subprocess.run(["Orthanc", "--version"], capture_output=True,
                                                    text=True).stdout.splitlines()[0]}
        for syntax, d in data.items():
            for s in servers:
                result[f"{s.name}_{syntax}"] = measure(s, d)
        for syntax in data:
            v, o = result[f"vigie_{syntax}"], result[f"orthanc_{syntax}"]
            result[f"ratio_{syntax}"] = {
                k: round(o[k] / v[k], 2) for k in v
                if k.endswith("_ms") and v.get(k) and o.get(k)}
        print(json.dumps(result, indent=2))
    finally:
        for p in (vigie, orthanc):
            p.terminate()
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
