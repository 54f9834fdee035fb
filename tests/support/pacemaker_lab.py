"""Real Pacemaker on the corosync lab nodes of tests/support/corosync_lab.py.

Rules:
1. Private state: each node's /var/lib/pacemaker and /var/log/pacemaker are bind mounts, in the
   node's private mount namespace, of directories under that node's scratch directory (owned by
   hacluster:haclient, as the package's are). The rest of what Pacemaker writes goes to the
   node's tmpfs /run and /dev/shm; its IPC uses abstract sockets, which are per network
   namespace. Syslog and the blackbox are off. ``host_state`` lists the machine's own
   Pacemaker directories, so a test can check that nothing was left there.
2. ``pacemakerd`` runs in the foreground per node, started only while the node's corosync runs.
3. Every Pacemaker process of a node is found by name *and* by the node's mount namespace, and
   stopped by its PID: ``stop`` asks pacemakerd to shut down (SIGTERM) and kills what is left
   after a bound; ``kill`` is the crash (SIGKILL, no goodbye to the peers).
4. Fencing without devices: every node starts from a seed CIB with ``stonith-enabled=false``
   (so the controller never fences by itself and the only history is what a test makes;
   ``stonith_admin --confirm`` needs no device) and ``dc-deadtime`` 2 s instead of 20 s, the
   wait before the first election. There is no ``.sig`` beside it: Pacemaker warns and takes it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from tests.support.corosync_lab import Node

DAEMONS = frozenset(
    {
        "pacemakerd",
        "pacemaker-based",
        "pacemaker-fenced",
        "pacemaker-execd",
        "pacemaker-attrd",
        "pacemaker-schedulerd",
        "pacemaker-controld",
    }
)
# /proc/PID/comm holds 15 characters: "pacemaker-controld" shows as "pacemaker-contr"
COMMS = frozenset(d[:15] for d in DAEMONS)
# Where Pacemaker keeps state (the package's paths) -> the scratch subdirectory behind it.
STATE = {"/var/lib/pacemaker": "lib", "/var/log/pacemaker": "log"}
LIB_DIRS = ("cib", "pengine", "blackbox", "cores")
SEED_CIB = """<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="lab-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="lab-dc-deadtime" name="dc-deadtime" value="2s"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""
ENV = {
    "PCMK_logfacility": "none",  # nothing to the machine's syslog
    "PCMK_logfile": "/var/log/pacemaker/pacemaker.log",  # inside the private mount
    "PCMK_blackbox": "no",
    "PCMK_debug": "no",
}


def run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def host_state() -> set[str]:
    """Every file under the machine's own Pacemaker state directories (not a node's)."""
    return {str(p) for top in STATE for p in Path(top).rglob("*") if p.is_file()}


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None  # gone, or a zombie


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Pacemaker:
    """Pacemaker on one lab node (see the module doc)."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.root = node.scratch / "pacemaker"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounted = False

    @property
    def log_path(self) -> Path:
        return self.root / "log" / "pacemaker.log"

    def cmd(self, *args: str) -> list[str]:
        return self.node.cmd(*args)

    def mount_state(self) -> None:
        """Private state directories owned by hacluster:haclient, with the seed CIB (rules 1, 4)."""
        if self.mounted:
            return
        uid, gid = pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid
        lib, log = self.root / "lib", self.root / "log"
        for d, mode in [(lib, 0o755), (log, 0o770), *((lib / d, 0o750) for d in LIB_DIRS)]:
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, uid, gid)
            d.chmod(mode)
        cib = lib / "cib" / "cib.xml"
        cib.write_text(SEED_CIB)
        os.chown(cib, uid, gid)
        cib.chmod(0o600)
        for target, sub in STATE.items():
            res = run(self.cmd("mount", "--bind", str(self.root / sub), target))
            if res.returncode != 0:
                raise RuntimeError(f"{self.name}: bind mount on {target} failed: {res.stderr}")
        self.mounted = True

    def start(self) -> None:
        if self.node.corosync is None or self.node.corosync.poll() is not None:
            raise RuntimeError(f"{self.name}: corosync is not running (rule 2)")
        self.mount_state()
        with open(self.root / "pacemakerd.out", "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd("pacemakerd"),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ENV},
            )

    def pids(self) -> list[int]:
        """Every Pacemaker daemon in this node's mount namespace, pacemakerd first."""
        ns = _mount_ns(self.node.holder.pid)
        found = [
            int(e.name)
            for e in Path("/proc").iterdir()
            if e.name.isdigit() and _comm(int(e.name)) in COMMS and _mount_ns(int(e.name)) == ns
        ]
        return sorted(found, key=lambda p: _comm(p) != "pacemakerd")

    def kill(self) -> None:
        """The crash: SIGKILL every daemon of the node, pacemakerd first (so none respawns),
        again until none is left."""
        deadline = time.monotonic() + 10
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: Pacemaker still runs after SIGKILL: {pids}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self._reap()

    def terminate(self) -> None:
        """Ask pacemakerd to shut the node's Pacemaker down (it stops its daemons in order)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down cleanly; kill what is left after ``timeout`` (rule 3)."""
        self.terminate()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def _reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None

    def online(self) -> set[str]:
        """The nodes this node's ``crm_mon -1`` shows online once there is a DC (else none)."""
        res = run(self.cmd("crm_mon", "-1", "--output-as=xml"), timeout=15)
        if res.returncode != 0:
            return set()
        doc = etree.fromstring(res.stdout.encode())
        if doc.find("summary/current_dc[@present='true']") is None:
            return set()
        return {str(n.get("name")) for n in doc.iterfind("nodes/node") if n.get("online") == "true"}

    def cluster_property(self, name: str) -> str:
        res = run(self.cmd("crm_attribute", "--type=crm_config", f"--name={name}", "--query", "-q"))
        return res.stdout.strip()


class PacemakerLab:
    """Pacemaker on some corosync lab nodes; ``close`` stops them all (always call it)."""

    def __init__(self) -> None:
        self.members: dict[str, Pacemaker] = {}

    def add(self, name: str, node: Node) -> Pacemaker:
        member = Pacemaker(node, name)
        self.members[name] = member
        return member

    def wait_online(self, names: set[str], at: str, timeout: float = 60) -> None:
        member = self.members[at]
        eventually(lambda: member.online() == names, timeout, f"{sorted(names)} online at {at}")

    def close(self) -> None:
        for member in self.members.values():  # all at once: a shutdown waits on the DC
            member.terminate()
        for member in self.members.values():
            with contextlib.suppress(Exception):
                member.stop()
