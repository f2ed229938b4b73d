#!/usr/bin/env bash
# Fresh machine to the appliance's main job: set everything up, start
# `vigie serve` on its embedded defaults (demo model from models/, local
# storage under .cache/vigie/demo/data), send it the 17 demo studies through
# its own DICOM port with DCMTK's storescu, as a modality or PACS would, and
# wait until every study has been assembled, analysed and its results
# written (DICOM SR under .cache/vigie/demo/data/results). The service log
# (stderr) says what happened, study by study; the status is printed at the
# end.
#
# Environment: VIGIE_DEMO_DICOM_PORT (11112), VIGIE_DEMO_HTTP_PORT (8080),
# VIGIE_DEMO_KEEP_RUNNING=1 to leave the service running afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
DICOM_PORT=${VIGIE_DEMO_DICOM_PORT:-11112}
HTTP_PORT=${VIGIE_DEMO_HTTP_PORT:-8080}
DATA=.cache/vigie/demo/data
rm -rf "$DATA"
# The only departure from the defaults: a 2 s stable age instead of 10 s, so
# the demo does not wait.
VIGIE__PIPELINE__STABLE_AGE_S=2 ./target/release/vigie serve \
  --data-dir "$DATA" --dicom-port "$DICOM_PORT" --http-port "$HTTP_PORT" &
VIGIE=$!
trap '[ "${VIGIE_DEMO_KEEP_RUNNING:-0}" = 1 ] || kill "$VIGIE" 2>/dev/null || true' EXIT
status() { curl -sf "http://127.0.0.1:$HTTP_PORT/api/v1/status"; }
for _ in $(seq 300); do status >/dev/null 2>&1 && break; sleep 0.2; done
status >/dev/null || { echo "[demo] vigie serve did not start" >&2; exit 1; }

echo "[demo] C-ECHO, then sending the 17 demo studies to VIGIE@127.0.0.1:$DICOM_PORT"
echoscu -aet DEMO-MODALITY -aec VIGIE 127.0.0.1 "$DICOM_PORT"
storescu -aet DEMO-MODALITY -aec VIGIE 127.0.0.1 "$DICOM_PORT" .cache/vigie/demo/dicom/*.dcm
N=$(ls .cache/vigie/demo/dicom/*.dcm | wc -l)
echo "[demo] $N instances acknowledged; waiting for the studies to be analysed"
done_jobs() { status | .venv/bin/python -c 'import json,sys; s=json.load(sys.stdin); print(s["jobs"].get("done",0), s["jobs"].get("failed",0))'; }
for _ in $(seq 600); do
  read -r ok failed < <(done_jobs)
  [ $((ok + failed)) -ge "$N" ] && break
  sleep 0.5
done
read -r ok failed < <(done_jobs)
echo "[demo] status: $(status)"
echo "[demo] $ok jobs done, $failed failed; result objects:"
find "$DATA/results" -name '*.dcm' | head -n 3
echo "[demo]   ... $(find "$DATA/results" -name '*.dcm' | wc -l) files under $DATA/results"
[ "$ok" -eq "$N" ] && [ "$failed" -eq 0 ] || exit 1
if [ "${VIGIE_DEMO_KEEP_RUNNING:-0}" = 1 ]; then
  echo "[demo] vigie serve keeps running (pid $VIGIE): DICOM port $DICOM_PORT, http://127.0.0.1:$HTTP_PORT/api/v1/jobs"
  wait "$VIGIE"
fi
