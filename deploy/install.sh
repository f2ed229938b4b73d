#!/usr/bin/env bash
# Install Vigie as a system service on a Debian/Ubuntu appliance.
#
#   deploy/install.sh [--root DIR] [--binary PATH] [--no-start]
#
# From a built repository (scripts/setup.sh, then cargo build --release):
# installs the binary, the ONNX Runtime library, the model packages, the
# configuration (only if none is there: yours is never overwritten), the
# systemd unit, creates the unprivileged user `vigie` and its data folder,
# enables and starts the service. Run it again to upgrade: the data folder
# and the configuration are kept. --root installs into another root (an
# image being built, or a test); the user is then not created and systemd
# is not touched. See docs/operations.md.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
BINARY="$REPO/target/release/vigie"
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --binary) BINARY=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
ORT="$REPO/.cache/vigie/onnxruntime/libonnxruntime.so.1.31.1"
say() { echo "[install] $*"; }
fail() { echo "[install] error: $*" >&2; exit 1; }
[ -x "$BINARY" ] || fail "no binary at $BINARY: run scripts/setup.sh (or cargo build --release) first, or pass --binary"
[ -f "$ORT" ] || fail "no ONNX Runtime library at $ORT: run scripts/setup.sh first"
R=${ROOT%/}
real_root=0
[ -z "$R" ] && real_root=1
if [ "$real_root" = 1 ] && [ "$(id -u)" != 0 ]; then fail "run as root (or with --root DIR)"; fi

say "binary -> $R/usr/bin/vigie"
install -D -m 0755 "$BINARY" "$R/usr/bin/vigie"
say "ONNX Runtime -> $R/usr/lib/vigie/"
install -D -m 0644 "$ORT" "$R/usr/lib/vigie/$(basename "$ORT")"
say "model packages -> $R/usr/share/vigie/models/"
for pkg in "$REPO"/models/*/; do
  [ -f "$pkg/model.toml" ] || continue
  name=$(basename "$pkg")
  weights=$(sed -n 's/^file *= *"\(.*\)"/\1/p' "$pkg/model.toml" | head -1)
  if [ -n "$weights" ] && [ ! -f "$pkg/$weights" ]; then
    say "  $name skipped: weights $weights not fetched (scripts/setup.sh)"
    continue
  fi
  rm -rf "$R/usr/share/vigie/models/$name.new"
  mkdir -p "$R/usr/share/vigie/models/$name.new"
  cp -p "$pkg"/* "$R/usr/share/vigie/models/$name.new/"
  chmod -R a+rX,go-w "$R/usr/share/vigie/models/$name.new"
  # Replace the package in one step: a running service never sees half of it.
  rm -rf "$R/usr/share/vigie/models/$name.old"
  [ -d "$R/usr/share/vigie/models/$name" ] && mv "$R/usr/share/vigie/models/$name" "$R/usr/share/vigie/models/$name.old"
  mv "$R/usr/share/vigie/models/$name.new" "$R/usr/share/vigie/models/$name"
  rm -rf "$R/usr/share/vigie/models/$name.old"
  say "  $name"
done
say "documentation -> $R/usr/share/doc/vigie/"
for doc in "$REPO"/README.md "$REPO"/docs/*.md "$REPO"/deploy/vigie.example.toml; do
  install -D -m 0644 "$doc" "$R/usr/share/doc/vigie/$(basename "$doc")"
done
say "systemd unit -> $R/lib/systemd/system/vigie.service"
install -D -m 0644 "$REPO/deploy/systemd/vigie.service" "$R/lib/systemd/system/vigie.service"
install -D -m 0644 "$REPO/deploy/systemd/cuda.conf" "$R/usr/share/doc/vigie/systemd/cuda.conf"

if [ "$real_root" = 1 ]; then
  if ! getent passwd vigie >/dev/null; then
    say "creating system user vigie"
    useradd --system --home-dir /var/lib/vigie --no-create-home --shell /usr/sbin/nologin \
      --user-group --comment "Vigie appliance" vigie
  fi
fi
install -d -m 0750 "$R/etc/vigie" "$R/var/lib/vigie"
if [ -f "$R/etc/vigie/vigie.toml" ]; then
  say "keeping the existing $R/etc/vigie/vigie.toml (the new defaults are in /usr/share/doc/vigie/)"
  install -m 0644 "$REPO/deploy/vigie.toml" "$R/usr/share/doc/vigie/vigie.toml.default"
else
  say "configuration -> $R/etc/vigie/vigie.toml"
  install -m 0640 "$REPO/deploy/vigie.toml" "$R/etc/vigie/vigie.toml"
fi
if [ "$real_root" = 1 ]; then
  chown root:vigie /etc/vigie /etc/vigie/vigie.toml
  chown vigie:vigie /var/lib/vigie
  /usr/bin/vigie config check /etc/vigie/vigie.toml
fi

if [ "$real_root" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable vigie.service
  if [ "$START" = 1 ]; then
    # An upgrade: restart lets in-flight work finish (SIGTERM, grace period).
    systemctl restart vigie.service
    say "started: systemctl status vigie; journalctl -u vigie"
  fi
else
  say "systemd not managed here: start with systemctl enable --now vigie (or: sudo -u vigie VIGIE_CONFIG=/etc/vigie/vigie.toml vigie serve)"
fi
say "done"
