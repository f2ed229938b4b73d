#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then
# checks formatting, lints and runs every test of the workspace.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VIGIE_SKIP_RELEASE=1 scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -q -- -D warnings
cargo test --workspace --locked
