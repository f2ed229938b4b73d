#!/usr/bin/env bash
# C-STORE ingest benchmark: `vigie serve` (fsync of file, folder and index
# before each Success) against DCMTK's `storescp` (writes files, no fsync),
# same files over loopback, same sender (DCMTK storescu), in one run,
# alternating servers round by round.
#
# Each round also runs storescp without fsync and with TCP_NODELAY on both
# sides: the sender's ceiling, what storescu and the protocol cost with a
# receiver that does nothing durable. Also measures, on the same files and
# disk, the durable-write floor
# (write + fsync + rename per file; and with the folder fsync too:
# benches/src/bin/fsync_floor.rs) and gives Vigie's time per instance as a
# multiple of it.
#
# A second sender isolates the receiver from storescu's own cost: Vigie's
# storage SCU (benches/src/bin/store_sender.rs: TCP_NODELAY, the same
# PARALLEL associations), to Vigie and to storescp without fsync (that
# sender's ceiling), in the same rounds.
#
# Usage: [KIND=mr|ct] benches/ingest/run.sh [INSTANCES] [ROUNDS] [PARALLEL]
#   KIND       mr: synthetic 512x512 16-bit MR, ~512 KiB (default);
#              ct: 128x128 16-bit CT, ~40 KB (the issue's files)
#   INSTANCES  number of instances (default 300)
#   ROUNDS     rounds per server (default 3)
#   PARALLEL   storescu processes sending at once, each a share of the files
#              (default 1; storescp serves them one association at a time)
# DCMTK runs with TCP_NODELAY=1 (sender and storescp): without it, Nagle's
# algorithm costs storescp ~40 ms per instance on loopback (7x slower), and
# the baseline must be DCMTK at its best. Vigie sets TCP_NODELAY itself.
# Data directories are created under target/ (the repository's file
# system, not tmpfs) so that fsync costs what it costs on this disk.
# DCMTK_NODELAY=0 runs DCMTK as installed instead (Nagle on: the issue's
# "storescp as it is" baseline; Vigie must not wait on delayed acks).
set -euo pipefail
if [ "${DCMTK_NODELAY:-1}" = 1 ]; then export TCP_NODELAY=1; else unset TCP_NODELAY; fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
N=${1:-300}
ROUNDS=${2:-3}
PARALLEL=${3:-1}
WORK="$ROOT/target/ingest-bench"
rm -rf "$WORK"
mkdir -p "$WORK/files"
KIND=${KIND:-mr}
# VIGIE_BIN: another build of vigie to measure (an earlier release, for
# before/after ratios), default the one built here.
VIGIE_BIN=${VIGIE_BIN:-./target/release/vigie}
cargo build --release --locked -q -p vigie-server -p vigie-benches
.venv/bin/python benches/ingest/make_instances.py "$N" "$WORK/files" "$KIND"
FLOOR=$(./target/release/fsync_floor "$WORK/files" "$WORK/floor" "$ROUNDS")
BYTES=$(du -sb "$WORK/files" | cut -f1)
PORT_STORESCP=11190
PORT_VIGIE=11191
HTTP_VIGIE=18191

send() { # port -> nanoseconds
  local port=$1 start end
  mapfile -t files < <(ls "$WORK"/files/*.dcm)
  start=$(date +%s%N)
  local pids=()
  for ((p = 0; p < PARALLEL; p++)); do
    share=()
    for ((i = p; i < ${#files[@]}; i += PARALLEL)); do share+=("${files[$i]}"); done
    storescu -aec BENCH -xe -R -ta 600 127.0.0.1 "$port" "${share[@]}" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  end=$(date +%s%N)
  echo $((end - start))
}

wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 not open" >&2; exit 1; }

start_vigie() {
  VIGIE__DICOM__AE_TITLE=BENCH VIGIE__PIPELINE__WORKERS=0 VIGIE__PIPELINE__STABLE_AGE_S=3600 \
  VIGIE__STORAGE__MIN_FREE_MIB=0 VIGIE__DICOM__MAX_ASSOCIATIONS=64 VIGIE__HTTP__METRICS_PUBLIC=true VIGIE_LOG=warn \
    "$VIGIE_BIN" serve --data-dir "$WORK/vigie" --dicom-port "$PORT_VIGIE" --http-port "$HTTP_VIGIE" & VIG=$!
  wait_port "$PORT_VIGIE"
}

stop_vigie() { # checks that every instance was stored
  local stored
  stored=$(curl -s "http://127.0.0.1:$HTTP_VIGIE/metrics" | sed -n 's/^vigie_instances_stored_total{source="dimse"} //p')
  kill "$VIG"; wait "$VIG" 2>/dev/null || true
  [ "$stored" -eq "$N" ] || { echo "vigie stored $stored of $N" >&2; exit 1; }
}

results=()
for ((r = 1; r <= ROUNDS; r++)); do
  rm -rf "$WORK/storescp" "$WORK/vigie"; mkdir -p "$WORK/storescp"
  storescp -aet BENCH -od "$WORK/storescp" "$PORT_STORESCP" & SCP=$!
  wait_port "$PORT_STORESCP"
  t_dcmtk=$(send "$PORT_STORESCP")
  kill "$SCP"; wait "$SCP" 2>/dev/null || true
  stored=$(ls "$WORK/storescp" | wc -l)
  [ "$stored" -eq "$N" ] || { echo "storescp stored $stored of $N" >&2; exit 1; }

  start_vigie
  t_vigie=$(send "$PORT_VIGIE")
  stop_vigie
  # The sender's own ceiling: storescp writing without fsync, DCMTK with
  # TCP_NODELAY on both sides. No receiver on this machine can take the
  # files faster from this sender.
  rm -rf "$WORK/ceiling"; mkdir -p "$WORK/ceiling"
  TCP_NODELAY=1 storescp -aet BENCH -od "$WORK/ceiling" "$PORT_STORESCP" & SCP=$!
  wait_port "$PORT_STORESCP"
  t_ceiling=$(TCP_NODELAY=1 send "$PORT_STORESCP")
  kill "$SCP"; wait "$SCP" 2>/dev/null || true
  # The same receivers from a sender that never waits on delayed
  # acknowledgements (Vigie's SCU): Vigie, then storescp without fsync.
  rm -rf "$WORK/vigie"
  start_vigie
  t_fast_vigie=$(./target/release/store_sender 127.0.0.1 "$PORT_VIGIE" BENCH "$PARALLEL" "$WORK/files")
  stop_vigie
  rm -rf "$WORK/ceiling"; mkdir -p "$WORK/ceiling"
  TCP_NODELAY=1 storescp -aet BENCH -od "$WORK/ceiling" "$PORT_STORESCP" & SCP=$!
  wait_port "$PORT_STORESCP"
  t_fast_ceiling=$(./target/release/store_sender 127.0.0.1 "$PORT_STORESCP" BENCH "$PARALLEL" "$WORK/files")
  kill "$SCP"; wait "$SCP" 2>/dev/null || true
  results+=("$t_dcmtk $t_vigie $t_ceiling $t_fast_vigie $t_fast_ceiling")
  echo "round $r: storescp $((t_dcmtk / 1000000)) ms, vigie $((t_vigie / 1000000)) ms, sender ceiling $((t_ceiling / 1000000)) ms; Vigie's SCU: to vigie $((t_fast_vigie / 1000000)) ms, to storescp (no fsync) $((t_fast_ceiling / 1000000)) ms" >&2
done
printf '%s\n' "${results[@]}" | .venv/bin/python -c '
import json, sys, statistics
n, b, par, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
floor = json.loads(sys.argv[4])
rows = [tuple(int(x) / 1e9 for x in l.split()) for l in sys.stdin if l.strip()]
d = statistics.median(r[0] for r in rows); v = statistics.median(r[1] for r in rows)
c = statistics.median(r[2] for r in rows)
fv = statistics.median(r[3] for r in rows); fc = statistics.median(r[4] for r in rows)
vigie_ms = v / n * 1000
fast_ms = fv / n * 1000
print(json.dumps({
  "kind": kind, "dcmtk_tcp_nodelay": sys.argv[6] == "1", "instances": n, "mib": round(b / 2**20, 1), "parallel_senders": par, "rounds": len(rows),
  "storescp_instances_per_s": round(n / d, 1), "vigie_instances_per_s": round(n / v, 1),
  "ratio_vigie_over_storescp": round(d / v, 3),
  "vigie_ms_per_instance": round(vigie_ms, 3),
  "sender_ceiling_ms_per_instance": round(c / n * 1000, 3),
  "vigie_durable_ms_beyond_ceiling": round((v - c) / n * 1000, 3),
  "floor_write_fsync_rename_ms": round(floor["write_fsync_rename_ms_per_file"], 3),
  "floor_with_folder_fsync_ms": round(floor["write_fsync_rename_fsync_folder_ms_per_file"], 3),
  "vigie_over_floor": round(vigie_ms / floor["write_fsync_rename_ms_per_file"], 2),
  "vigie_scu_to_vigie_ms_per_instance": round(fast_ms, 3),
  "vigie_scu_ceiling_ms_per_instance": round(fc / n * 1000, 3),
  "vigie_from_vigie_scu_over_floor": round(fast_ms / floor["write_fsync_rename_ms_per_file"], 2),
  "vigie_from_vigie_scu_over_storescp_from_same": round(fv / fc, 2),
  "rounds_s": [[round(x, 3) for x in r] for r in rows],
}, indent=2))' "$N" "$BYTES" "$PARALLEL" "$FLOOR" "$KIND" "${DCMTK_NODELAY:-1}"
rm -rf "$WORK"
