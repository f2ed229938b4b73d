"""Throughput of `vigie validate run` against that of `vigie serve` on the
same model, the same images and the same configuration, in one run.

What is validated must be what runs: both go through the hot loop
(`vigie_analysis::analyse_stream`) with the settings resolved from the same
configuration file. This measures whether they also run at the same speed.

Two shapes of traffic, each as a `serve` run and a `validate run` over a
dataset made from the very same files (`vigie validate import-dicom`, keyed
by Study Instance UID):

- `series`: one study, one series of N instances: `serve` makes one job and
  streams its N instances through the hot loop, as `validate run` streams
  its N cases;
- `studies`: N single-instance studies (the demo's traffic): `serve` makes N
  jobs, one hot-loop stream each, with its per-job work (claiming the job,
  writing the SR and summary image, indexing them, finishing the job).

Throughput is taken the same way for both, from their audit trails: N - 1
images over the time from the first to the last `inference` record, which
leaves out starting the process, loading the model, receiving the files
(`serve`; they are all received before the first job starts) and writing
the report (`validate run`). The wall time of each whole command is printed
too. Runs alternate serve / validate, round by round; the ratio is
validate / serve per round, and the median over rounds.

Usage: .venv/bin/python benches/validate_vs_serve/run.py [--vigie target/release/vigie]
       [--images 48] [--rounds 3] [--model ID]
Prints one JSON object. Needs `scripts/setup.sh` (the demo DICOM files under
.cache/vigie/demo/dicom) and DCMTK's storescu.
"""
import argparse
import datetime
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

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_files(count, out, one_series):
    demo = sorted((ROOT / ".cache/vigie/demo/dicom").rglob("*.dcm"))
    if not demo:
        sys.exit("run scripts/setup.sh first (it writes .cache/vigie/demo/dicom)")
    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(prefix="2.25."), generate_uid(prefix="2.25.")
    studies = []
    for i in range(count):
        ds = pydicom.dcmread(demo[i % len(demo)])
        if one_series:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.InstanceNumber = i + 1
        else:
            ds.StudyInstanceUID = generate_uid(prefix="2.25.")
            ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
        ds.SOPInstanceUID = generate_uid(prefix="2.25.")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"i{i:04d}.dcm", enforce_file_format=True)
        if ds.StudyInstanceUID not in studies:
            studies.append(ds.StudyInstanceUID)
    return studies


def config(work, model, http_port):
    path = work / "vigie.toml"
    path.write_text(f"""
[appliance]
id = "bench"
[inference]
models_dir = "{ROOT / 'models'}"
onnxruntime_library = "{ROOT / '.cache/vigie/onnxruntime/libonnxruntime.so.1.31.1'}"
[dicom]
bind = "127.0.0.1"
[http]
bind = "127.0.0.1"
metrics_public = true
[storage]
min_free_mib = 0
[pipeline]
stable_age_s = 5.0
[log]
level = "warn"
[[routing.rules]]
name = "all"
models = ["{model}"]
""")
    return path


def inference_times(vigie, cfg, data_dir):
    out = subprocess.run([vigie, "--config", str(cfg), "audit", "query", "--data-dir",
                          str(data_dir), "--kind", "inference"],
                         check=True, capture_output=True, text=True).stdout
    times = []
    for line in out.splitlines():
        if line.strip():
            rec = json.loads(line)
            times.append(datetime.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")))
    return sorted(times)


def throughput(times):
    span = (times[-1] - times[0]).total_seconds()
    return (len(times) - 1) / span


def metric(http_port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_serve(vigie, work, files, model, expected_jobs, n):
    dicom_port, http_port = free_port(), free_port()
    cfg = config(work, model, http_port)
    data = work / "serve-data"
    shutil.rmtree(data, ignore_errors=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([vigie, "serve", "--config", str(cfg), "--data-dir", str(data),
                             "--dicom-port", str(dicom_port), "--http-port", str(http_port)],
                            stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "a"))
    try:
        for _ in range(600):
            try:
                metric(http_port, "vigie_jobs")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("vigie serve did not start")
        subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "VIGIE", "-xe",
                        "127.0.0.1", str(dicom_port)] + [str(p) for p in sorted(files.glob("*.dcm"))],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "TCP_NODELAY": "1"})
        received = time.monotonic()
        while metric(http_port, 'vigie_jobs{state="done"}') < expected_jobs:
            if time.monotonic() - t0 > 900:
                raise SystemExit("serve timed out")
            time.sleep(0.1)
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    times = inference_times(vigie, cfg, data)
    if len(times) != n:
        raise SystemExit(f"serve recorded {len(times)} inferences, expected {n}")
    return {"images_per_s": throughput(times), "wall_s": wall,
            "received_after_s": received - t0}


def import_dataset(vigie, work, files, studies, label, name):
    labels = work / f"{name}.csv"
    labels.write_text("study_instance_uid,label\n" + "".join(f"{u},{label}\n" for u in studies))
    out = work / f"{name}-dataset"
    subprocess.run([vigie, "--config", str(work / "vigie.toml"), "validate", "import-dicom",
                    "--labels", str(labels), "--out", str(out), str(files)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def run_validate(vigie, work, dataset, model, n):
    cfg = work / "vigie.toml"
    data = work / "validate-data"
    report = work / "report"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(report, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run([vigie, "--config", str(cfg), "validate", "run", "--dataset", str(dataset),
                    "--model", model, "--out", str(report), "--data-dir", str(data)],
                   check=True, stdout=subprocess.DEVNULL, stderr=open(work / "validate.log", "a"))
    wall = time.monotonic() - t0
    times = inference_times(vigie, cfg, data)
    if len(times) != n:
        raise SystemExit(f"validate run recorded {len(times)} inferences, expected {n}")
    return {"images_per_s": throughput(times), "wall_s": wall}


def first_label(model):
    import tomllib
    manifest = tomllib.loads((ROOT / "models" / model / "model.toml").read_text())
    return manifest["output"]["labels"][0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vigie", default=str(ROOT / "target/release/vigie"))
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="brain-tumour-vgg16")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vigie-vvs-", dir=ROOT / "target"))
    try:
        label = first_label(args.model)
        config(work, args.model, 0)
        shapes = {}
        for shape in ("series", "studies"):
            files = work / f"{shape}-files"
            studies = make_files(args.images, files, shape == "series")
            dataset = import_dataset(args.vigie, work, files, studies, label, shape)
            shapes[shape] = (files, studies, dataset)
        result = {"machine": {"cpus": os.cpu_count()}, "model": args.model,
                  "images": args.images, "rounds": args.rounds, "shapes": {}}
        for shape, (files, studies, dataset) in shapes.items():
            rounds = []
            for _ in range(args.rounds):
                serve = run_serve(args.vigie, work, files, args.model, len(studies), args.images)
                validate = run_validate(args.vigie, work, dataset, args.model, args.images)
                rounds.append({
                    "serve_images_per_s": round(serve["images_per_s"], 3),
                    "validate_images_per_s": round(validate["images_per_s"], 3),
                    "validate_over_serve": round(validate["images_per_s"] / serve["images_per_s"], 3),
                    "serve_wall_s": round(serve["wall_s"], 2),
                    "serve_received_after_s": round(serve["received_after_s"], 2),
                    "validate_wall_s": round(validate["wall_s"], 2),
                })
            result["shapes"][shape] = {
                "jobs_in_serve": len(studies),
                "rounds": rounds,
                "median_validate_over_serve": statistics.median(
                    r["validate_over_serve"] for r in rounds),
            }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
