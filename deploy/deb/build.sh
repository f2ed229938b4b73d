#!/usr/bin/env bash
# Build the Debian package of Vigie from a built repository.
#
#   deploy/deb/build.sh [--binary PATH] [--out DIR] [--fast]
#
# --fast: no compression (tests; a release build uses gzip).
# Lays the files out exactly as deploy/install.sh does (binary, ONNX
# Runtime library, model packages with their weights, unit, docs, default
# configuration as a conffile), adds the maintainer scripts (user, data
# folder, systemd) and runs dpkg-deb. Prints the path of the .deb.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BINARY="$REPO/target/release/vigie"
OUT="$REPO/target/deb"
COMPRESS=gzip
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --fast) COMPRESS=none; shift ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"
"$REPO/deploy/install.sh" --root "$STAGE" --binary "$BINARY" >/dev/null
mkdir -p "$STAGE/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: vigie
Version: $VERSION
Architecture: $ARCH
Maintainer: Vigie <support@vigie.invalid>
Installed-Size: $SIZE
Depends: libc6 (>= 2.36), passwd
Section: science
Priority: optional
Homepage: https://example.invalid/vigie
Description: on-premises AI inference appliance for medical imaging
 A DICOM node (C-ECHO, C-STORE) and DICOMweb service (STOW-RS, QIDO-RS,
 WADO-RS) that runs model packages on received studies, returns DICOM
 Structured Reports and Segmentations to the PACS, and keeps a
 tamper-evident audit trail of everything it did.
CONTROL
echo /etc/vigie/vigie.toml > "$STAGE/DEBIAN/conffiles"
cat > "$STAGE/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd vigie >/dev/null; then
    useradd --system --home-dir /var/lib/vigie --no-create-home --shell /usr/sbin/nologin \
      --user-group --comment "Vigie appliance" vigie
  fi
  chown root:vigie /etc/vigie /etc/vigie/vigie.toml
  chmod 0750 /etc/vigie
  chmod 0640 /etc/vigie/vigie.toml
  chown vigie:vigie /var/lib/vigie
  chmod 0750 /var/lib/vigie
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable vigie.service
    systemctl restart vigie.service
  fi
fi
exit 0
SCRIPT
cat > "$STAGE/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable --now vigie.service || true
fi
exit 0
SCRIPT
cat > "$STAGE/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "$1" = purge ]; then
  # The records of an appliance outlive its software: data, audit trail
  # and keys stay; remove /var/lib/vigie by hand once they are archived.
  echo "vigie: /var/lib/vigie (studies, results, audit trail and its keys) is kept" >&2
fi
exit 0
SCRIPT
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/prerm" "$STAGE/DEBIAN/postrm"
mkdir -p "$OUT"
DEB="$OUT/vigie_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group "-Z$COMPRESS" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
