#!/usr/bin/env bash
# Build xvmd_<version>_all.deb from this source tree, offline: no pip, no network, no debhelper,
# only dpkg-deb, gzip and a Python >= 3.11 that can import lxml (to read pyproject.toml and to
# generate the manual page from the real argparse parsers).
#
#     bash contrib/debian/build-deb.sh [OUTDIR]        # default OUTDIR: dist/
#     apt install ./dist/xvmd_0.1.0_all.deb           # pulls in the python3-* dependencies
#
# The package runs on Debian's own python3 and python3-* modules. The unit is enabled on
# installation but NOT started (see postinst below).
#
# Environment: PYTHON (default .venv/bin/python if present, else python3), DEB_MAINTAINER,
# SOURCE_DATE_EPOCH (default: the last commit's time; file dates in the package).
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUTDIR=${1:-$REPO/dist}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

die() {
    echo "build-deb: $*" >&2
    exit 1
}

for tool in dpkg-deb gzip find install; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

# --- version: pyproject.toml, which must agree with xvmd.__version__ ------------------------------
read -r VERSION DEBVERSION LICENSE < <("$PYTHON" - "$REPO" <<'EOF'
import re
import sys
import tomllib
from pathlib import Path

repo = Path(sys.argv[1])
project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
version = project["version"]
init = (repo / "xvmd" / "__init__.py").read_text()
m = re.search(r'^__version__ = "([^"]+)"', init, re.M)
if not m or m.group(1) != version:
    sys.exit(f"pyproject.toml says {version}, xvmd/__init__.py says {m and m.group(1)}")
# PEP 440 -> Debian: pre-releases and dev releases sort before the release (~), post after (+).
deb = re.sub(r"(?<=\d)\.?(a|b|rc)(?=\d)", r"~\1", version)
deb = deb.replace(".dev", "~dev").replace(".post", "+post")
print(version, deb, project["license"]["text"])
EOF
) || die "cannot read the version (with $PYTHON)"
[ -n "${DEBVERSION:-}" ] || die "no version"
[ "$VERSION" = "$DEBVERSION" ] || echo "build-deb: version $VERSION is $DEBVERSION in Debian's spelling"
# The copyright file below states this licence; keep the two in step.
[ "$LICENSE" = "GPL-2.0-or-later" ] || die "pyproject.toml licence is $LICENSE; update debian/copyright text"

if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || true)
fi
[ -n "${SOURCE_DATE_EPOCH:-}" ] && export SOURCE_DATE_EPOCH

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
SITE=$ROOT/usr/lib/python3/dist-packages
DOC=$ROOT/usr/share/doc/xvmd

# --- the Python packages, as source (Python byte-compiles them on first use) ----------------------
for pkg in xvmd ccs; do
    [ -f "$REPO/$pkg/__init__.py" ] || die "$REPO/$pkg is not a package"
    while IFS= read -r -d '' file; do
        install -D -m 0644 "$REPO/$file" "$SITE/$file"
    done < <(cd "$REPO" && find "$pkg" -type f \( -name '*.py' -o -name py.typed \) \
        -not -path '*/__pycache__/*' -print0 | sort -z)
done

# --- the program: a tiny wrapper on Debian's python3 ------------------------------------------------
install -d -m 0755 "$ROOT/usr/sbin"
cat >"$ROOT/usr/sbin/xvmd" <<'EOF'
#!/usr/bin/python3
"""xvmd: fence_xvm-compatible, cluster-aware host fencing daemon (see xvmd(8))."""
import sys

from xvmd.cli import main

sys.exit(main())
EOF
chmod 0755 "$ROOT/usr/sbin/xvmd"

# --- systemd unit, its EnvironmentFile (a conffile), the manual page -------------------------------
install -D -m 0644 "$REPO/contrib/xvmd.service" "$ROOT/lib/systemd/system/xvmd.service"
# The template for several daemons, one per guest cluster (xvmd@NAME); never enabled by the
# package: an instance exists only once the administrator writes /etc/default/xvmd-NAME.
install -D -m 0644 "$REPO/contrib/xvmd@.service" "$ROOT/lib/systemd/system/xvmd@.service"
install -D -m 0644 "$REPO/contrib/default/xvmd" "$ROOT/etc/default/xvmd"
# Rotation of the audit trails without copytruncate: xvmd notices the rename by itself.
install -D -m 0644 "$REPO/contrib/logrotate/xvmd" "$ROOT/etc/logrotate.d/xvmd"
install -d -m 0755 "$ROOT/usr/share/man/man8"
"$PYTHON" "$REPO/contrib/man/gen_manpage.py" >"$STAGE/xvmd.8" || die "gen_manpage.py failed"
gzip -9 -n -c "$STAGE/xvmd.8" >"$ROOT/usr/share/man/man8/xvmd.8.gz"

# --- documentation: README.md and docs/ keep their layout, so the README's links still work ------
install -D -m 0644 "$REPO/README.md" "$DOC/README.md"
for md in "$REPO"/docs/*.md; do
    install -D -m 0644 "$md" "$DOC/docs/$(basename "$md")"
done
if [ -d "$REPO/contrib/examples" ]; then
    while IFS= read -r -d '' file; do
        install -D -m 0644 "$REPO/contrib/examples/$file" "$DOC/examples/$file"
    done < <(cd "$REPO/contrib/examples" && find . -type f -not -name '.*' -printf '%P\0' | sort -z)
fi
cat >"$DOC/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xvmd

Files: *
Copyright: the xvmd authors
License: GPL-2.0+

License: GPL-2.0+
 This program is free software; you can redistribute it and/or modify it under
 the terms of the GNU General Public License as published by the Free Software
 Foundation; either version 2 of the License, or (at your option) any later
 version.
 .
 This program is distributed in the hope that it will be useful, but WITHOUT
 ANY WARRANTY; without even the implied warranty of MERCHANTABILITY or FITNESS
 FOR A PARTICULAR PURPOSE. See the GNU General Public License for more details.
 .
 On Debian systems, the complete text of the GNU General Public License
 version 2 can be found in /usr/share/common-licenses/GPL-2.
EOF
chmod 0644 "$DOC/copyright"

# --- DEBIAN/ ---------------------------------------------------------------------------------------
INSTALLED_SIZE=$(du -sk --apparent-size "$ROOT" | cut -f1)
install -d -m 0755 "$ROOT/DEBIAN"
cat >"$ROOT/DEBIAN/control" <<EOF
Package: xvmd
Version: $DEBVERSION
Architecture: all
Maintainer: ${DEB_MAINTAINER:-xvmd maintainers <root@localhost>}
Installed-Size: $INSTALLED_SIZE
Depends: python3 (>= 3.11), python3-lxml, python3-libvirt, python3-pyroute2, python3-watchdog, python3-uvloop, python3-prometheus-client
Recommends: libquorum5, libvotequorum8, libcmap4, libcfg7, fence-virt
Suggests: corosync, libvirt-daemon-system
Section: admin
Priority: optional
Description: fence_xvm-compatible, cluster-aware host fencing daemon for libvirt
 xvmd runs on each KVM/libvirt host and answers the stock guest-side fence
 agent fence_xvm (package fence-virt) byte for byte: a guest cluster
 (Pacemaker, or cman/rgmanager) sends a signed multicast request, xvmd
 connects back, both sides prove they hold the shared key, and xvmd powers
 the named libvirt domain off, on or through a reboot. It replaces
 fence_virtd, with no head-of-line blocking, honest results and an audit
 trail of every power action.
 .
 In cluster mode (the default) the hosts form a corosync cluster and power
 actions are carried out only while this host's partition is quorate; the
 guest cluster's /etc/cluster/cluster.conf decides who may ask, which VMs
 may be fenced and with which key. "xvmd check-config" validates a
 configuration, "xvmd status" shows the running daemon's view and
 "xvmd audit" reads the audit trail.
 .
 The xvmd service is enabled on installation but not started: configure it
 first (cluster.conf and keys, /etc/default/xvmd), then run
 "systemctl start xvmd".
EOF
printf '/etc/default/xvmd\n/etc/logrotate.d/xvmd\n' >"$ROOT/DEBIAN/conffiles"

cat >"$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# xvmd postinst: enable xvmd.service, but do NOT start it on a fresh install. A fencing daemon
# must not run before it has been configured (cluster.conf and its keys, corosync on the hosts,
# /etc/default/xvmd): started too early it would fail in a restart loop, or serve a half-finished
# configuration and power VMs off on its say-so. Start it when ready: systemctl start xvmd.
# On an upgrade a running daemon is restarted so that it runs the new code (try-restart: a
# stopped one stays stopped).
set -e
UNIT=xvmd.service

case "$1" in
configure | abort-upgrade | abort-deconfigure | abort-remove)
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        # Drops only a mask that deb-systemd-helper itself set when the package was removed.
        deb-systemd-helper unmask "$UNIT" >/dev/null || true
        # was-enabled is true on a first install (enable it); on an upgrade it keeps the
        # administrator's choice (a disabled unit stays disabled).
        if deb-systemd-helper --quiet was-enabled "$UNIT"; then
            deb-systemd-helper enable "$UNIT" >/dev/null || true
        else
            deb-systemd-helper update-state "$UNIT" >/dev/null || true
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            if command -v deb-systemd-invoke >/dev/null 2>&1; then
                deb-systemd-invoke try-restart "$UNIT" >/dev/null || true
            else
                systemctl try-restart "$UNIT" >/dev/null || true
            fi
            # Running instances of xvmd@.service too (the pattern matches loaded units only).
            systemctl try-restart 'xvmd@*.service' >/dev/null || true
        fi
    fi
    ;;
esac
exit 0
EOF

cat >"$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# xvmd prerm: stop the daemon when the package is removed (SIGTERM: it drains the requests in
# flight first). On an upgrade it keeps running; postinst restarts it on the new code.
set -e
UNIT=xvmd.service

if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    if command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke stop "$UNIT" >/dev/null || true
    else
        systemctl stop "$UNIT" >/dev/null || true
    fi
    # And every running instance of xvmd@.service (the pattern matches loaded units only).
    systemctl stop 'xvmd@*.service' >/dev/null || true
fi
# Byte code Python wrote next to the packaged modules: dpkg does not know these files, and
# would leave the directories behind.
for pkg in xvmd ccs; do
    if [ -d "/usr/lib/python3/dist-packages/$pkg" ]; then
        find "/usr/lib/python3/dist-packages/$pkg" -depth -type d -name __pycache__ \
            -exec rm -rf {} + || true
    fi
done
exit 0
EOF

cat >"$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# xvmd postrm: forget the unit's enablement state; on purge also delete the audit trail.
set -e
UNIT=xvmd.service

if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper mask "$UNIT" >/dev/null || true
fi
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper purge "$UNIT" >/dev/null || true
        deb-systemd-helper unmask "$UNIT" >/dev/null || true
    fi
    # The audit trails are this package's log: kept on remove, deleted on purge (Debian Policy
    # 10.8). Copy /var/lib/xvmd/audit*.jsonl away first if the record must be kept.
    rm -rf /var/lib/xvmd
fi
exit 0
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles"

if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
fi

DEB=$OUTDIR/xvmd_${DEBVERSION}_all.deb
dpkg-deb --root-owner-group --build "$ROOT" "$DEB" >/dev/null
echo "build-deb: $DEB"
