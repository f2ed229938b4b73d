"""Closing a study on release, against the stable age: latency from the
release of the association that carried a one-instance study to its SR
stored in the PACS (Orthanc), with the model's own time for comparison.

Two `vigie serve` run side by side in one run, on the same Orthanc:
- before: the stable age alone, at 0.1 s (the end-to-end benchmark's
  setting; the default is 10 s);
- after: `pipeline.release_grace_s = 0` with the default stable age (10 s),
  so that only the release can close the study quickly.
Studies alternate between the two, one at a time, so that both see the
same machine state. The study is sent by pynetdicom in this process (the
release time is when `release()` returns); the SR's arrival is polled from
Orthanc's REST API every 2 ms. The model's own time (the ONNX Runtime run,
and decode + pre + post) is read from each job's `inference` audit record.

Usage: .venv/bin/python benches/early_close/run.py [--vigie target/release/vigie] [--studies 20]
Prints one JSON object.
"""
import argparse
import hashlib
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "bench-auditor-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studies(count):
    demo = sorted((ROOT / ".cache/vigie/demo/dicom").glob("*.dcm"))
    if not demo:
        sys.exit("run scripts/demo.sh (or scripts/setup.sh and the demo import) first")
    out = []
    for i in range(count):
        ds = pydicom.dcmread(demo[i % len(demo)])
        ds.StudyInstanceUID = generate_uid(prefix="2.25.")
        ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
        ds.SOPInstanceUID = generate_uid(prefix="2.25.")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def http_json(url, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


class Orthanc:
    def __init__(self, work):
        self.http, self.dicom = free_port(), free_port()
        template = (ROOT / "tests/peers/orthanc.json").read_text()
        config = (template.replace("@STORAGE@", str(work / "orthanc"))
                  .replace("@HTTP_PORT@", str(self.http))
                  .replace("@DICOM_PORT@", str(self.dicom)))
        (work / "orthanc.json").write_text(config)
        self.proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                http_json(f"http://127.0.0.1:{self.http}/system")
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("Orthanc did not start")

    def has_sr(self, study):
        found = http_json(f"http://127.0.0.1:{self.http}/tools/find",
                          {"Level": "Series",
                           "Query": {"StudyInstanceUID": study, "Modality": "SR"}})
        return bool(found)


def start_vigie(binary, work, name, orthanc, pipeline):
    dicom, http = free_port(), free_port()
    sha = hashlib.sha256(TOKEN.encode()).hexdigest()
    config = work / f"{name}.toml"
    config.write_text(f"""
[appliance]
id = "bench-{name}"
[inference]
models_dir = "{ROOT / 'models'}"
onnxruntime_library = "{ROOT / '.cache/vigie/onnxruntime/libonnxruntime.so.1.31.1'}"
intra_threads = {os.cpu_count()}
[dicom]
bind = "127.0.0.1"
[http]
bind = "127.0.0.1"
[[http.tokens]]
name = "bench"
role = "auditor"
sha256 = "{sha}"
[storage]
min_free_mib = 0
[pipeline]
{pipeline}
[log]
level = "warn"
[[routing.rules]]
name = "all"
destinations = ["pacs"]
[destinations.pacs]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc.dicom}
""")
    proc = subprocess.Popen([str(binary), "serve", "--config", str(config),
                             "--data-dir", str(work / f"{name}-data"),
                             "--dicom-port", str(dicom), "--http-port", str(http)],
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2):
                return proc, dicom, http
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"vigie ({name}) did not start")


def send(port, ds):
    """Store `ds` on one association; the monotonic time of its release."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="VIGIE")
    if not assoc.is_established:
        raise SystemExit("association refused")
    status = assoc.send_c_store(ds)
    if getattr(status, "Status", None) != 0:
        raise SystemExit(f"C-STORE failed: {status}")
    assoc.release()
    return time.monotonic()


def model_time(http, study):
    records = http_json(f"http://127.0.0.1:{http}/api/v1/audit?kind=inference&study={study}",
                        token=TOKEN)
    records = records.get("records", records) if isinstance(records, dict) else records
    details = json.loads(records[0]["details"])
    timings = details["frames"][0]["timings_ms"]
    own = details["decode_ms"] + timings["preprocess_ms"] + timings["inference_ms"] + timings["postprocess_ms"]
    return timings["inference_ms"] / 1000, own / 1000


def measure(orthanc, port, http, ds):
    released = send(port, ds)
    while not orthanc.has_sr(ds.StudyInstanceUID):
        if time.monotonic() - released > 120:
            raise SystemExit("no SR within 120 s")
        time.sleep(0.002)
    latency = time.monotonic() - released
    # The inference record is written with the results; give it a moment.
    for _ in range(100):
        try:
            run, own = model_time(http, ds.StudyInstanceUID)
            return latency, run, own
        except (IndexError, KeyError):
            time.sleep(0.05)
    raise SystemExit("no inference record")


def summary(rows):
    lat = sorted(r[0] for r in rows)
    pct = lambda p: lat[min(len(lat) - 1, round((len(lat) - 1) * p))]
    run = statistics.median(r[1] for r in rows)
    own = statistics.median(r[2] for r in rows)
    return {
        "studies": len(rows),
        "latency_p50_s": round(pct(0.5), 3),
        "latency_p95_s": round(pct(0.95), 3),
        "model_run_p50_s": round(run, 3),
        "model_own_p50_s": round(own, 3),
        "latency_minus_model_run_p50_s": round(statistics.median(r[0] - r[1] for r in rows), 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vigie", default=str(ROOT / "target/release/vigie"))
    parser.add_argument("--studies", type=int, default=20, help="per side")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vigie-early-", dir=ROOT / "target"))
    procs = []
    try:
        orthanc = Orthanc(work)
        procs.append(orthanc.proc)
        before, before_port, before_http = start_vigie(
            args.vigie, work, "before", orthanc, "stable_age_s = 0.1")
        procs.append(before)
        after, after_port, after_http = start_vigie(
            args.vigie, work, "after", orthanc, "stable_age_s = 10.0\nrelease_grace_s = 0.0")
        procs.append(after)
        sides = {"before": (before_port, before_http, []), "after": (after_port, after_http, [])}
        all_studies = studies(2 * args.studies + 2)
        # Warm-up: each side loads its model on its first study.
        for name, (port, http, _) in sides.items():
            measure(orthanc, port, http, all_studies.pop())
        for i in range(args.studies):
            for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                port, http, rows = sides[name]
                rows.append(measure(orthanc, port, http, all_studies.pop()))
        result = {
            "machine": {"cpus": os.cpu_count()},
            "before_stable_age_0_1_s": summary(sides["before"][2]),
            "after_release_grace_0_s_stable_age_10_s": summary(sides["after"][2]),
        }
        print(json.dumps(result, indent=2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
