"""Pieces shared by the multi-host labs (tests/e2e/test_multi_host.py, tests/support/chaos.py).

Hosts and a guest on one bridge: the bridge lives in a namespace of its own, and every host or
guest namespace gets a veth pair whose bridge end is named after it (so cutting a host off is
``ip link set PORT down`` on the bridge). The guest cluster's cluster.conf gives node1 the
guest's address as an ``<altname>``, so requests sent from the guest are from a cluster node.

``Hypervisor`` is a private libvirtd (the test driver, ``test:///default``) inside a corosync lab
node (tests/support/corosync_lab.py), in the node's network and mount namespaces:

- its sockets are the default ones under ``/run/libvirt``, which is the node's own tmpfs, so the
  node's xvmd uses ``-U test+unix:///default`` and the harness runs ``virsh`` in the node;
- ``/var/lib/libvirt``, ``/var/cache/libvirt``, ``/var/log/libvirt`` and ``/etc/libvirt`` are bind
  mounts (in the node's private mount namespace only) of directories under the node's scratch
  directory, ``LIBVIRT_DRIVER_DIR`` points at an empty directory (no qemu, network or storage
  driver is loaded: the test driver is built into libvirt) and logs go to stderr, so libvirtd
  writes nothing outside the scratch directory;
- the test driver keeps ``/default`` only while a connection to it is open: a ``virsh`` shell
  (the keeper) holds one from start to kill, so the domains survive xvmd's reconnects and the
  harness's short ``virsh`` runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.corosync_lab import Lab, Node
from tests.support.harness import FIXTURES, Netns
from xvmd.daemon import control

PORT = 22231
GROUP = "225.0.0.12"
GUEST = "10.77.0.100"


def cluster_conf(root: Path, devices: dict[str, str], nodes: dict[str, tuple[str, str]]) -> Path:
    """``devices``: device -> key fixture; ``nodes``: node -> (device, VM). node1 sends."""
    root.mkdir(parents=True, exist_ok=True)
    devs = []
    for device, fixture in devices.items():
        key = root / f"{device}.key"
        shutil.copy(FIXTURES / "keys" / fixture, key)
        key.chmod(0o600)
        devs.append(f'<fencedevice name="{device}" agent="fence_xvm" key_file="{key}"/>')
    members = "".join(
        f'<clusternode name="{node}" nodeid="{i}">'
        + (f'<altname name="{GUEST}"/>' if i == 1 else "")
        + f'<fence><method name="1"><device name="{dev}" port="{vm}"/></method></fence>'
        "</clusternode>"
        for i, (node, (dev, vm)) in enumerate(nodes.items(), start=1)
    )
    conf = root / "cluster.conf"
    conf.write_text(
        f'<cluster name="guests" config_version="1"><clusternodes>{members}</clusternodes>'
        f"<fencedevices>{''.join(devs)}</fencedevices></cluster>\n"
    )
    return conf


def make_bridge(lab: Lab, prefix: str) -> Netns:
    """A namespace holding ``br0``, a bridge that floods multicast to every port."""
    bridge = lab.netns(prefix)
    bridge.ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    bridge.ip("link", "set", "br0", "up")
    return bridge


def plug(bridge: Netns, ns: Netns, port: str, addr: str) -> None:
    """Connect ``ns`` to the bridge: ``eth0`` with ``addr``/24 inside, ``port`` on the bridge."""
    bridge.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    bridge.ip("link", "set", port, "master", "br0")
    bridge.ip("link", "set", port, "up")
    ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
    ns.ip("link", "set", "eth0", "up")
    ns.ip("route", "add", "224.0.0.0/4", "dev", "eth0")


def host_status(node: Node, timeout: float = 5) -> dict[str, Any]:
    """The status document of the daemon whose control socket is ``scratch/xvmd.sock`` (what
    ``xvmd status --json`` prints); empty when it does not answer."""
    try:
        return control.query(str(node.scratch / "xvmd.sock"), timeout=timeout)
    except control.ControlError:
        return {}


def domain_xml(name: str, uuid: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
        "<memory>65536</memory><os><type>hvm</type></os></domain>"
    )


LIBVIRT_DIRS = {
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
    "etc": "/etc/libvirt",
}


class Hypervisor:
    """A private libvirtd in a lab node (see the module doc). ``boot`` counts its starts."""

    URI = "test+unix:///default"

    def __init__(self, node: Node, domains: dict[str, str]) -> None:
        self.node = node
        self.domains = domains  # name -> UUID, defined (shut off) at every start
        self.root = node.scratch / "libvirt"
        self.drivers = self.root / "drivers"  # empty: no driver module is loaded
        self.conf = self.root / "libvirtd.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.keeper: subprocess.Popen[bytes] | None = None
        self.boot = 0
        self._mounted = False

    def _mount(self) -> None:
        for sub in (*LIBVIRT_DIRS, "drivers", "xml"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        binds = " && ".join(
            f"mount --bind {self.root / sub} {target}" for sub, target in LIBVIRT_DIRS.items()
        )
        # Inside the node's private mount namespace only (nsenter -m): never the machine's.
        res = subprocess.run(self.node.cmd("sh", "-c", binds), capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"bind mounts for libvirtd failed: {res.stderr}")
        self.conf.write_text(
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\nlog_outputs = "3:stderr"\n'
        )
        self._mounted = True

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20) -> None:
        """libvirtd with every domain defined and shut off (a host that has just booted)."""
        if not self._mounted:
            self._mount()
        env = f"LIBVIRT_DRIVER_DIR={self.drivers}"
        with open(self.node.scratch / "libvirtd.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.node.cmd("env", env, "libvirtd", "-f", str(self.conf)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while self.virsh("uri").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd did not come up in {self.node.scratch}")
            time.sleep(0.05)
        self.keeper = subprocess.Popen(
            self.node.cmd("virsh", "-q", "-c", self.URI),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.keeper.stdin is not None and self.keeper.stdout is not None
        self.keeper.stdin.write(b"uri\n")  # answered only over an open connection
        self.keeper.stdin.flush()
        seen = b""
        while self.URI.encode() + b"\n" not in seen:  # after the echoed prompt and command
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.keeper.stdout], [], [], max(0.0, left))
            chunk = os.read(self.keeper.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise RuntimeError(f"the libvirt keeper connection did not come up: {seen!r}")
            seen += chunk
        self._checked("destroy", "test")  # the test driver's own sample domain
        self._checked("undefine", "test")
        for name, uuid in self.domains.items():
            xml = self.root / "xml" / f"{name}.xml"
            xml.write_text(domain_xml(name, uuid))
            self._checked("define", str(xml))
        self.boot += 1

    def _checked(self, *args: str) -> None:
        res = self.virsh(*args)
        if res.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {res.stderr.strip()}")

    def kill(self) -> None:
        """SIGKILL libvirtd (its domains are gone with it) and the keeper."""
        for proc in (self.proc, self.keeper):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
        for proc in (self.proc, self.keeper):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        self.proc = self.keeper = None

    def virsh(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.node.cmd("virsh", "-q", "-c", self.URI, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def domains_now(self) -> dict[str, tuple[str, int | None]]:
        """name -> (state, domain id or None when inactive), from ``virsh list --all``."""
        res = self.virsh("list", "--all")
        if res.returncode != 0:
            raise RuntimeError(f"virsh list on {self.node.scratch.name}: {res.stderr.strip()}")
        out: dict[str, tuple[str, int | None]] = {}
        for line in res.stdout.splitlines():
            if not line.strip():
                continue
            domid, name, state = line.split(None, 2)
            out[name] = (state.strip(), None if domid == "-" else int(domid))
        return out
