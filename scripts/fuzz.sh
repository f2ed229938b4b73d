#!/usr/bin/env bash
# A longer fuzzing campaign than the one in the test command: every target
# of the seeded mutation harness (vigie_test_support::fuzz) for SECONDS each
# (default 300), up to ITERATIONS mutants (default 10 000 000), with
# VIGIE_FUZZ_SEED (default 0x5EED) choosing the mutants. A crash stops its
# target and leaves the input under target/fuzz-crashes/<target>/: commit it
# as a regression case. Prints "fuzz <target>: N executions in T s" per
# target; docs/fuzzing.md records the last campaign.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_PER_TARGET=${1:-300}
ITERATIONS=${2:-10000000}
export VIGIE_FUZZ_SECONDS=$SECONDS_PER_TARGET VIGIE_FUZZ_ITERATIONS=$ITERATIONS
run() {
    cargo test --locked -q "$@" -- --nocapture --test-threads=1 fuzz_ 2>&1 | grep -oE 'fuzz [a-z0-9-]+: [0-9]+ executions in [0-9.]+ s|fuzz target .*|FAILED.*' || true
}
run -p vigie-dicom-io --test fuzz
run -p vigie-inference --test fuzz_manifest
run -p vigie-dicom-io --lib
run -p vigie-store --lib
run -p vigie-analysis --lib
run -p vigie-validation --lib
