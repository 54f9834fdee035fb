#!/usr/bin/env bash
# Install what xvmd needs on Debian 12 (idempotent): the real peers the tests drive, the
# libvirt headers libvirt-python builds against, and the project's virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (apt-get, network namespaces)" >&2
    exit 1
fi

PACKAGES=(
    fence-virt fence-virtd            # the stock fence_xvm / fence_virt client and the reference daemon
    corosync                          # the host cluster: quorum for cluster mode (libquorum etc.)
    pacemaker pacemaker-cli-utils     # the host cluster's fencing history (stonith_admin), proof a host is down
    libvirt-daemon-system libvirt-clients   # libvirtd (needs the users -system creates) and virsh
    libvirt-dev pkg-config            # to build libvirt-python
    iproute2 util-linux               # ip netns, unshare
    python3-venv python3-dev gcc
    # Debian's own modules: the .deb test runs the packaged daemon on them
    python3-lxml python3-libvirt python3-pyroute2 python3-watchdog python3-uvloop python3-prometheus-client
    man-db                            # renders the man page in its test
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import xvmd, libvirt, pyroute2, lxml, watchdog, prometheus_client, pytest, mypy' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
fi
echo "setup: ready ($(.venv/bin/python --version), libvirt $(.venv/bin/python -c 'import libvirt; print(libvirt.getVersion())'))"
