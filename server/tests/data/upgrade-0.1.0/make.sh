#!/usr/bin/env bash
# Makes data.tar.gz: a data directory as release 0.1.0 (commit 79db11d) left
# it, for server/tests/upgrade.rs. Synthetic data only (make_studies.py).
#
# Usage: server/tests/data/upgrade-0.1.0/make.sh  (from the repository, after
# scripts/setup.sh). Builds 0.1.0 in a git worktree, then:
# 1. serves with one worker: study A is analysed, its results are delivered
#    to PACS (a DCMTK storescp) and stay pending for ARCHIVE (unreachable,
#    retried every 2 s, so due when the test starts); a clean stop;
# 2. serves with no worker (0.1.0's maintenance mode): study B is complete
#    and its job pending; study C is received and still within its stable
#    age when the service stops cleanly.
# The data directory lives at the fixed path /tmp/vigie-upgrade-0.1.0/data,
# because 0.1.0's catalog records absolute paths: the test unpacks it there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../.." && pwd)
work=/tmp/vigie-upgrade-0.1.0
rm -rf "$work"
mkdir -p "$work"
if [[ ! -x ${VIGIE_010:-} ]]; then
  git -C "$repo" worktree add --force "$work/src" 79db11d >/dev/null
  (cd "$work/src" && CARGO_TARGET_DIR="$work/target" cargo build --locked -q -p vigie-server --bin vigie)
  VIGIE_010="$work/target/debug/vigie"
fi
"$repo/.venv/bin/python" "$here/make_studies.py" "$work/studies"

port() { "$repo/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pacs_port=$(port); archive_port=$(port); dicom_port=$(port); http_port=$(port)
mkdir -p "$work/pacs"
storescp -aet PACS -od "$work/pacs" "$pacs_port" &
pacs=$!
trap 'kill $pacs 2>/dev/null || true' EXIT

token=upgrade-fixture-token
config() {
  cat <<TOML
[appliance]
id = "vigie-upgrade-fixture"
data_dir = "$work/data"

[dicom]
bind = "127.0.0.1"
port = $dicom_port

[http]
bind = "127.0.0.1"
port = $http_port
[[http.tokens]]
name = "fixture"
role = "admin"
sha256 = "$(printf %s "$token" | sha256sum | cut -d' ' -f1)"

[inference]
models_dir = "$repo/models"
onnxruntime_library = "$repo/.cache/vigie/onnxruntime/libonnxruntime.so.1.31.1"
intra_threads = 1

[storage]
min_free_mib = 0

[pipeline]
stable_age_s = $2
workers = $1

[delivery]
retry_initial_s = 2.0
retry_max_s = 2.0

[audit]
checkpoint_every = 16

[[routing.rules]]
name = "mr"
modalities = ["MR"]
models = ["fixture-bright-disk"]
destinations = ["pacs", "archive"]

[destinations.pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = $pacs_port

[destinations.archive]
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = $archive_port
TOML
}

api() { curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$http_port$1"; }
serve() {
  config "$1" "$2" > "$work/vigie.toml"
  "$VIGIE_010" serve --config "$work/vigie.toml" 2>>"$work/vigie.log" &
  vigie=$!
  for _ in $(seq 100); do api /healthz >/dev/null 2>&1 && return; sleep 0.1; done
  echo "vigie 0.1.0 did not start" >&2; cat "$work/vigie.log" >&2; exit 1
}
stop() { kill -TERM "$vigie"; wait "$vigie"; }
wait_for() {
  for _ in $(seq 300); do
    api /api/v1/jobs | "$repo/.venv/bin/python" -c "import json,sys; jobs=json.load(sys.stdin); sys.exit(0 if $1 else 1)" && return
    sleep 0.1
  done
  echo "timed out waiting for: $1" >&2; exit 1
}

# 1. Study A analysed; delivered to PACS, pending for ARCHIVE.
serve 1 0.5
storescu -aec VIGIE 127.0.0.1 "$dicom_port" "$work/studies/A/"*.dcm
wait_for 'any(j["state"] == "done" for j in jobs)'
for _ in $(seq 100); do [[ $(ls "$work/pacs" | wc -l) -ge 2 ]] && break; sleep 0.1; done
stop
# 2. Study B's job pending (no worker), study C still receiving.
serve 0 2
storescu -aec VIGIE 127.0.0.1 "$dicom_port" "$work/studies/B/"*.dcm
wait_for 'any(j["state"] == "pending" for j in jobs)'
storescu -aec VIGIE 127.0.0.1 "$dicom_port" "$work/studies/C/"*.dcm
stop

"$VIGIE_010" audit verify --config "$work/vigie.toml"
sqlite3 "$work/data/index.sqlite" "SELECT 'jobs', state, count(*) FROM jobs GROUP BY state;
  SELECT 'outbox', state, count(*) FROM outbox GROUP BY state;
  SELECT 'studies', state, count(*) FROM studies GROUP BY state;
  SELECT 'instances', count(*) FROM instances;"
tar -C "$work" -czf "$here/data.tar.gz" --owner=0 --group=0 --sort=name data
ls -l "$here/data.tar.gz"
git -C "$repo" worktree remove --force "$work/src" 2>/dev/null || true
