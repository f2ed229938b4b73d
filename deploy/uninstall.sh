#!/usr/bin/env bash
# Remove Vigie's programs; keep its data.
#
#   deploy/uninstall.sh [--root DIR]
#
# Stops and disables the service, removes the binary, the ONNX Runtime
# library, the model packages, the unit and the documentation. Keeps
# /etc/vigie (configuration), /var/lib/vigie (received studies, results,
# catalog, the audit trail and its keys) and the user: an appliance's
# records outlive its software (docs/operations.md, "Removing Vigie").
set -euo pipefail
ROOT=/
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    *) echo "uninstall.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
R=${ROOT%/}
say() { echo "[uninstall] $*"; }
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now vigie.service || true
fi
rm -f "$R/usr/bin/vigie" "$R/lib/systemd/system/vigie.service"
rm -rf "$R/usr/lib/vigie" "$R/usr/share/vigie" "$R/usr/share/doc/vigie"
if [ -z "$R" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
say "removed the programs; kept $R/etc/vigie and $R/var/lib/vigie (data and audit trail) and the user vigie"
