#!/usr/bin/env bash
# Every benchmark, in one run, on this machine: writes benches/RESULTS.json
# and the generated section at the top of benches/RESULTS.md (between the
# "generated" markers; the analysis below it is written by hand).
#
# Usage: benches/run_all.sh   (after scripts/setup.sh and scripts/demo.sh,
#                              on a machine doing nothing else: ~30 minutes)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$(mktemp -d)
say() { echo "[bench] $*" >&2; }
cargo build --release --locked -q -p vigie-server -p vigie-benches
say "criterion: decode, preprocess, encode, audit, backends"
cargo bench -q -p vigie-benches --bench decode --bench preprocess --bench encode --bench audit --bench backends \
  -- --warm-up-time 1 --measurement-time 3 >/dev/null 2>&1
say "inference: hot loop vs Python onnxruntime (2 threads, batch 1 and 4; int8 candidate)"
benches/run_inference.sh 3 2 1 > "$OUT/inference_b1.json"
benches/run_inference.sh 3 2 4 > "$OUT/inference_b4.json"
VIGIE_BENCH_MODEL=models/candidates/brain-tumour-vgg16-int8 benches/run_inference.sh 3 2 1 > "$OUT/inference_int8.json"
say "feed capacity: hot loop on a model that costs nothing, 1..nproc decode threads"
benches/feed/run.sh 20 "$(nproc)" > "$OUT/feed.json"
say "ingest: vigie serve vs storescp at its best (512 KiB MR, 1 and 4 associations)"
benches/ingest/run.sh 300 3 1 > "$OUT/ingest_1.json"
benches/ingest/run.sh 300 3 4 > "$OUT/ingest_4.json"
say "ingest: vigie serve vs storescp as installed (40 KB CT, 1 and 8 associations), floor and sender ceiling"
KIND=ct DCMTK_NODELAY=0 benches/ingest/run.sh 400 3 1 > "$OUT/ingest_ct_1.json"
KIND=ct DCMTK_NODELAY=0 benches/ingest/run.sh 400 3 8 > "$OUT/ingest_ct_8.json"
say "WADO-RS: frames and rendered images, vigie vs Orthanc's DICOMweb plugin"
.venv/bin/python benches/wado/run.py > "$OUT/wado.json"
say "end to end: storescu -> vigie -> SR in Orthanc"
.venv/bin/python benches/e2e/run.py > "$OUT/e2e.json"
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, platform, subprocess, sys, datetime
out = pathlib.Path(sys.argv[1])
root = pathlib.Path("target/criterion")
criterion = {}
for est in sorted(root.glob("*/*/new/estimates.json")):
    group, bench = est.parts[-4], est.parts[-3]
    criterion[f"{group}/{bench}"] = round(json.loads(est.read_text())["median"]["point_estimate"] / 1000, 1)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
result = {
    "machine": {"cpu": cpu, "cores": __import__("os").cpu_count(), "memory_kib": int(mem), "os": platform.platform()},
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "commit": commit,
    "criterion_median_us": criterion,
    "inference": [json.loads((out / f).read_text()) for f in ("inference_b1.json", "inference_b4.json", "inference_int8.json")],
    "feed": json.loads((out / "feed.json").read_text()),
    "ingest": [json.loads((out / f).read_text()) for f in ("ingest_1.json", "ingest_4.json", "ingest_ct_1.json", "ingest_ct_8.json")],
    "end_to_end": json.loads((out / "e2e.json").read_text()),
    "wado": json.loads((out / "wado.json").read_text()),
}
pathlib.Path("benches/RESULTS.json").write_text(json.dumps(result, indent=2) + "\n")
e = result["end_to_end"]
lines = [
    "<!-- generated:start (benches/run_all.sh) -->",
    f"## Latest full run ({result['date']}, commit {commit})",
    "",
    f"Machine: {cpu}, {result['machine']['cores']} cores, {int(mem) // 1024} MiB, {result['machine']['os']}. Command: `benches/run_all.sh`; every figure in `benches/RESULTS.json`.",
    "",
    "| benchmark | figure |",
    "|---|---|",
]
for i in result["inference"]:
    lines.append(f"| inference, {pathlib.Path(i['model']).name}, batch {i['max_batch']}: hot loop / Python onnxruntime | {i['ratio_vigie_over_baseline']} ({i['vigie_pipeline_images_per_s']} vs {i['baseline_python_onnxruntime_images_per_s']} img/s) |")
for f in result["feed"]:
    lines.append(f"| feed capacity, {f['decode_threads']} decode thread(s) | {f['hot_loop_images_per_s']} instances/s ({f['speedup_over_one_thread']}× one thread) |")
for g in result["ingest"]:
    dcmtk = "at its best" if g["dcmtk_tcp_nodelay"] else "as installed"
    lines.append(f"| ingest {g['kind']} ({g['mib']} MiB), {g['parallel_senders']} association(s): vigie / storescp {dcmtk} | {g['ratio_vigie_over_storescp']} ({g['vigie_instances_per_s']} vs {g['storescp_instances_per_s']} instances/s); vigie {g['vigie_ms_per_instance']} ms per instance = {g['vigie_over_floor']}× the write+fsync+rename floor, sender ceiling {g['sender_ceiling_ms_per_instance']} ms; from Vigie's SCU {g['vigie_scu_to_vigie_ms_per_instance']} ms = {g['vigie_from_vigie_scu_over_floor']}× the floor (that sender's ceiling {g['vigie_scu_ceiling_ms_per_instance']} ms) |")
for l in e["latency"]:
    lines.append(f"| end to end, {l['in_flight']} in flight: latency p50 / p95 | {l['latency_p50_s']} / {l['latency_p95_s']} s ({l['studies_per_s']} studies/s) |")
lines.append(f"| peak RSS of vigie after 16 in flight | {round(e['peak_rss_bytes_after_16_in_flight'] / 2**20)} MiB |")
for c in e["cost_curve"]:
    lines.append(f"| cost curve, {c['studies']} studies at once | {c['wall_s']} s, {c['studies_per_s']} studies/s, mean latency {c['latency_mean_s']} s |")
for k, v in criterion.items():
    lines.append(f"| criterion {k} (median) | {v} µs |")
lines.append("<!-- generated:end -->")
md = pathlib.Path("benches/RESULTS.md").read_text()
start, end = "<!-- generated:start", "<!-- generated:end -->"
if start in md:
    before = md[: md.index(start)]
    after = md[md.index(end) + len(end):]
    md = before + "\n".join(lines) + after
else:
    head, _, rest = md.partition("\n## ")
    md = head + "\n" + "\n".join(lines) + "\n\n## " + rest
pathlib.Path("benches/RESULTS.md").write_text(md)
print(json.dumps(result["inference"][0]))
PY
rm -rf "$OUT"
say "written: benches/RESULTS.json and the top of benches/RESULTS.md"
