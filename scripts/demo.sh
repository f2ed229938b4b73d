#!/usr/bin/env bash
# Fresh machine to the appliance's main job: set everything up, start
# `vigie serve` on its embedded defaults (demo model from models/, local
# storage under .cache/vigie/demo/data) plus one destination, a stand-in
# PACS (DCMTK's storescp writing to .cache/vigie/demo/pacs); send it the 17
# demo studies through its own DICOM port with DCMTK's storescu, as a
# modality or PACS would; wait until every study has been assembled,
# analysed, and its results (a DICOM SR and a summary image, the default)
# delivered to the stand-in PACS. The
# service log (stderr) says what happened, study by study; the status is
# printed at the end.
#
# Environment: VIGIE_DEMO_DICOM_PORT (11112), VIGIE_DEMO_HTTP_PORT (8080),
# VIGIE_DEMO_PACS_PORT (11113), VIGIE_DEMO_KEEP_RUNNING=1 to leave the
# service running afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
DICOM_PORT=${VIGIE_DEMO_DICOM_PORT:-11112}
HTTP_PORT=${VIGIE_DEMO_HTTP_PORT:-8080}
PACS_PORT=${VIGIE_DEMO_PACS_PORT:-11113}
DATA=.cache/vigie/demo/data
PACS=.cache/vigie/demo/pacs
rm -rf "$DATA" "$PACS"
mkdir -p "$PACS"
storescp -aet DEMO-PACS -od "$PACS" "$PACS_PORT" &
STORESCP=$!
# Departures from the embedded defaults: the stand-in PACS as destination of
# the default rule, and a 2 s stable age instead of 10 s so the demo does
# not wait.
CONFIG=.cache/vigie/demo/vigie-demo.toml
# An operator token for this run of the demo (only its SHA-256 goes in the
# configuration; see docs/api.md).
TOKEN="vigie_$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
TOKEN_SHA256=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
cat > "$CONFIG" <<TOML
[[http.tokens]]
name = "demo"
role = "operator"
sha256 = "$TOKEN_SHA256"

[pipeline]
stable_age_s = 2.0

[[routing.rules]]
name = "default"
destinations = ["demo-pacs"]

[destinations.demo-pacs]
ae_title = "DEMO-PACS"
host = "127.0.0.1"
port = $PACS_PORT
TOML
./target/release/vigie serve --config "$CONFIG" \
  --data-dir "$DATA" --dicom-port "$DICOM_PORT" --http-port "$HTTP_PORT" &
VIGIE=$!
trap '[ "${VIGIE_DEMO_KEEP_RUNNING:-0}" = 1 ] || kill "$VIGIE" "$STORESCP" 2>/dev/null || true' EXIT
status() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP_PORT/api/v1/status"; }
for _ in $(seq 300); do status >/dev/null 2>&1 && break; sleep 0.2; done
status >/dev/null || { echo "[demo] vigie serve did not start" >&2; exit 1; }

echo "[demo] C-ECHO, then sending the 17 demo studies to VIGIE@127.0.0.1:$DICOM_PORT"
echoscu -aet DEMO-MODALITY -aec VIGIE 127.0.0.1 "$DICOM_PORT"
storescu -aet DEMO-MODALITY -aec VIGIE 127.0.0.1 "$DICOM_PORT" .cache/vigie/demo/dicom/*.dcm
N=$(ls .cache/vigie/demo/dicom/*.dcm | wc -l)
echo "[demo] $N instances acknowledged; waiting for the studies to be analysed"
progress() { status | .venv/bin/python -c 'import json,sys; s=json.load(sys.stdin); o=s["outbox"]; print(s["jobs"].get("done",0), s["jobs"].get("failed",0), o["sent"], o["failed"], o.get("pending",0) + o.get("awaiting_commitment",0))'; }
# Done when every study is analysed and nothing waits in the outbox (each
# job queues its results before it is done).
for _ in $(seq 600); do
  read -r ok failed sent undeliverable waiting < <(progress)
  [ $((ok + failed)) -ge "$N" ] && [ "$waiting" -eq 0 ] && [ $((sent + undeliverable)) -ge "$ok" ] && break
  sleep 0.5
done
read -r ok failed sent undeliverable waiting < <(progress)
echo "[demo] status: $(status)"
echo "[demo] $ok jobs done, $failed failed; $sent results delivered to DEMO-PACS (an SR and a summary image per study), $undeliverable undeliverable, $(ls "$PACS" | wc -l) files in $PACS:"
ls "$PACS" | head -n 3
[ "$ok" -eq "$N" ] && [ "$failed" -eq 0 ] && [ "$undeliverable" -eq 0 ] && [ "$waiting" -eq 0 ] && [ "$sent" -ge "$N" ] || exit 1
if [ "${VIGIE_DEMO_KEEP_RUNNING:-0}" != 1 ]; then
  kill -TERM "$VIGIE"; wait "$VIGIE" || true
  echo "[demo] the audit trail of this run:"
  ./target/release/vigie audit verify --data-dir "$DATA"
  ./target/release/vigie audit export --data-dir "$DATA" --format csv --out "$DATA/inferences.csv"
  echo "[demo] one row per inference in $DATA/inferences.csv"
fi
if [ "${VIGIE_DEMO_KEEP_RUNNING:-0}" = 1 ]; then
  echo "[demo] vigie serve keeps running (pid $VIGIE): DICOM port $DICOM_PORT, http://127.0.0.1:$HTTP_PORT/api/v1/jobs"
  wait "$VIGIE"
fi
