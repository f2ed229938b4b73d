"""End-to-end benchmark: a study sent by DCMTK `storescu` to `vigie serve`
until its SR is stored in Orthanc (the PACS), over loopback.

1. Latency with 1, 4 and 16 studies in flight (a new study is sent as soon
   as one's SR has arrived), stable age at its minimum: p50/p95 and
   studies per second.
2. Peak memory (VmHWM of the vigie process) after the 16-in-flight run,
   which uses 16 concurrent associations.
3. Cost curve: 1, 10 and 100 studies sent at once on one association:
   time until the last SR, studies per second, mean latency.

Studies are single-instance MR studies made from the 17 demo pictures with
fresh UIDs (pydicom), so every one is a new study. Prints one JSON object.

Usage: .venv/bin/python benches/e2e/run.py [--vigie target/release/vigie] [--per-level N] [--curve 1,10,100]
"""
import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pydicom
from pydicom.uid import generate_uid

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_studies(count, out):
    demo = sorted((ROOT / ".cache/vigie/demo/dicom").glob("*.dcm"))
    if not demo:
        sys.exit("run scripts/demo.sh (or scripts/setup.sh and the demo import) first")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        ds = pydicom.dcmread(demo[i % len(demo)])
        ds.StudyInstanceUID = generate_uid(prefix="2.25.")
        ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
        ds.SOPInstanceUID = generate_uid(prefix="2.25.")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"s{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append((ds.StudyInstanceUID, path))
    return files


class Orthanc:
    def __init__(self, work):
        self.known = {}
        self.http = free_port()
        self.dicom = free_port()
        template = (ROOT / "tests/peers/orthanc.json").read_text()
        config = (template.replace("@STORAGE@", str(work / "orthanc"))
                  .replace("@HTTP_PORT@", str(self.http))
                  .replace("@DICOM_PORT@", str(self.dicom)))
        (work / "orthanc.json").write_text(config)
        self.proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("Orthanc did not start")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
            return json.load(r)

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def sr_studies(self):
        found = self.post("/tools/find", {"Level": "Series", "Query": {"Modality": "SR"},
                                          "Expand": True})
        uids = set()
        for series in found:
            parent = series["ParentStudy"]
            if parent not in self.known:
                study = self.get(f"/studies/{parent}")
                self.known[parent] = study["MainDicomTags"]["StudyInstanceUID"]
            uids.add(self.known[parent])
        return uids


def start_vigie(binary, work, orthanc):
    dicom, http = free_port(), free_port()
    config = work / "vigie.toml"
    config.write_text(f"""
[appliance]
id = "bench"
[inference]
models_dir = "{ROOT / 'models'}"
onnxruntime_library = "{ROOT / '.cache/vigie/onnxruntime/libonnxruntime.so.1.31.1'}"
intra_threads = {os.cpu_count()}
[dicom]
bind = "127.0.0.1"
max_associations = 32
[storage]
min_free_mib = 0
[pipeline]
stable_age_s = 0.1
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
                             "--data-dir", str(work / "vigie-data"),
                             "--dicom-port", str(dicom), "--http-port", str(http)],
                            stdout=subprocess.DEVNULL, stderr=open(work / "vigie.log", "w"))
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2):
                return proc, dicom
        except OSError:
            time.sleep(0.1)
    raise SystemExit("vigie did not start")


def peak_rss(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def send(port, path):
    subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "VIGIE", "-xe",
                    "127.0.0.1", str(port), str(path)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "TCP_NODELAY": "1"})


def run_batch(studies, orthanc, port):
    """All studies sent at once on one association (a PACS forwarding a
    worklist); time until the last SR is in Orthanc."""
    t0 = time.monotonic()
    sender = threading.Thread(
        target=lambda: subprocess.run(
            ["storescu", "-aet", "MODALITY", "-aec", "VIGIE", "-xe", "127.0.0.1", str(port)]
            + [str(p) for _, p in studies],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"}),
        daemon=True)
    sender.start()
    waiting = {uid for uid, _ in studies}
    done = {}
    while waiting:
        arrived = orthanc.sr_studies()
        now = time.monotonic()
        for uid in list(waiting):
            if uid in arrived:
                done[uid] = now - t0
                waiting.discard(uid)
        if now - t0 > 900:
            raise SystemExit(f"timed out with {len(waiting)} studies waiting")
        time.sleep(0.05)
    total = time.monotonic() - t0
    return {
        "studies": len(done),
        "wall_s": round(total, 2),
        "studies_per_s": round(len(done) / total, 3),
        "latency_mean_s": round(statistics.mean(done.values()), 3),
        "first_result_s": round(min(done.values()), 3),
    }


def run_level(studies, in_flight, orthanc, port):
    """Keep `in_flight` studies outstanding; latency from send to SR in Orthanc."""
    pending = list(studies)
    started, done = {}, {}
    lock = threading.Lock()
    outstanding = set()
    t0 = time.monotonic()
    while pending or outstanding:
        while pending and len(outstanding) < in_flight:
            uid, path = pending.pop(0)
            with lock:
                started[uid] = time.monotonic()
                outstanding.add(uid)
            threading.Thread(target=send, args=(port, path), daemon=True).start()
        arrived = orthanc.sr_studies()
        now = time.monotonic()
        for uid in list(outstanding):
            if uid in arrived:
                done[uid] = now - started[uid]
                outstanding.discard(uid)
        if time.monotonic() - t0 > 900:
            raise SystemExit(f"timed out with {len(outstanding)} studies outstanding")
        time.sleep(0.05)
    total = time.monotonic() - t0
    lat = sorted(done.values())
    pct = lambda p: lat[min(len(lat) - 1, round((len(lat) - 1) * p))]
    return {
        "studies": len(lat),
        "in_flight": in_flight,
        "wall_s": round(total, 2),
        "studies_per_s": round(len(lat) / total, 3),
        "latency_p50_s": round(pct(0.5), 3),
        "latency_p95_s": round(pct(0.95), 3),
        "latency_mean_s": round(statistics.mean(lat), 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vigie", default=str(ROOT / "target/release/vigie"))
    parser.add_argument("--per-level", type=int, default=16)
    parser.add_argument("--curve", default="1,10,100", help="study counts of the cost curve")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vigie-e2e-", dir=ROOT / "target"))
    try:
        curve = [int(n) for n in args.curve.split(",")]
        total = 3 * args.per_level + 1 + sum(curve)
        studies = make_studies(total, work / "studies")
        orthanc = Orthanc(work)
        vigie, port = start_vigie(args.vigie, work, orthanc)
        subprocess.run(["curl", "-s", "-f", "-X", "PUT", "-d",
                        json.dumps({"AET": "VIGIE", "Host": "127.0.0.1", "Port": port}),
                        f"http://127.0.0.1:{orthanc.http}/modalities/vigie"],
                       check=True, stdout=subprocess.DEVNULL)
        # Warm-up: the first study loads the model.
        warm = run_level(studies[:1], 1, orthanc, port)
        studies = studies[1:]
        result = {"machine": {"cpus": os.cpu_count()}, "warm_up": warm, "latency": [], "cost_curve": []}
        for level in (1, 4, 16):
            chunk, studies = studies[:args.per_level], studies[args.per_level:]
            result["latency"].append(run_level(chunk, level, orthanc, port))
            if level == 16:
                result["peak_rss_bytes_after_16_in_flight"] = peak_rss(vigie.pid)
        for n in curve:
            chunk, studies = studies[:n], studies[n:]
            if len(chunk) < n:
                break
            result["cost_curve"].append(run_batch(chunk, orthanc, port))
        result["peak_rss_bytes_end"] = peak_rss(vigie.pid)
        vigie.terminate()
        vigie.wait(60)
        orthanc.proc.terminate()
        orthanc.proc.wait(60)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
