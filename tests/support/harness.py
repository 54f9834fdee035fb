"""Private network namespaces, the xvmd daemon as a process, and the real fence_xvm client.

Every namespace holds only ``lo`` (plus interfaces a test creates inside it), so nothing a test
sends can leave the machine. Every process is stopped by its own PID; every namespace is deleted.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
DOMAINS_XML = FIXTURES / "domains.xml"
FENCE_XVM = "/usr/sbin/fence_xvm"
FENCE_VIRT = "/usr/sbin/fence_virt"

_counter = itertools.count()


def missing_prerequisites() -> list[str]:
    """What the end-to-end tests need and this machine lacks."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (for network namespaces)")
    for tool in (FENCE_XVM, "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"):
        if not (os.path.exists(tool) or shutil.which(tool)):
            missing.append(tool)
    return missing


def run(
    cmd: Sequence[str], timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check)


class Netns:
    """A fresh network namespace with ``lo`` up."""

    def __init__(self, prefix: str = "xvmd-t") -> None:
        self.name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def ip(self, *args: str) -> None:
        run(["ip", "-n", self.name, *args])

    def add_ipv6_link(self, address: str = "fd00::1/64") -> str:
        """A veth pair inside the namespace carrying a ULA address (the client skips ::1)."""
        self.ip("link", "add", "xv0", "type", "veth", "peer", "name", "xv1")
        self.ip("addr", "add", address, "dev", "xv0", "nodad")
        self.ip("link", "set", "xv0", "up")
        self.ip("link", "set", "xv1", "up")
        return "xv0"

    def close(self) -> None:
        pids = run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", self.name], check=False)


@dataclass
class ClientResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


class Place(Protocol):
    """Where a process runs: a Netns, or a corosync lab Node (netns + private mounts)."""

    def cmd(self, *args: str) -> list[str]: ...


@dataclass
class Xvmd:
    """An xvmd process inside a namespace."""

    netns: Place
    args: list[str]
    log_path: Path
    port: int = 0
    env: dict[str, str] | None = None  # added to the environment (NOTIFY_SOCKET, ...)
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = field(default=None)

    def start(self, ready_timeout: float = 15.0) -> Xvmd:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.netns.cmd(sys.executable, "-m", "xvmd", *self.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, **(self.env or {})},
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if "xvmd ready" in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"xvmd exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"xvmd not ready after {ready_timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        return self.exit_code


def run_xvmd_once(netns: Place, args: Sequence[str], timeout: float = 15) -> ClientResult:
    """Run xvmd expecting it to exit by itself (start-up errors)."""
    t0 = time.monotonic()
    proc = subprocess.run(
        netns.cmd(sys.executable, "-m", "xvmd", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    return ClientResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def fence_xvm(
    netns: Place, *args: str, timeout: float = 40, program: str = FENCE_XVM
) -> ClientResult:
    """Run the stock client inside the namespace, under a test-side timeout as well."""
    t0 = time.monotonic()
    proc = subprocess.run(
        netns.cmd(program, *args), capture_output=True, text=True, timeout=timeout
    )
    return ClientResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def parse_list(stdout: str) -> dict[str, tuple[str, str]]:
    """``fence_xvm -o list`` lines -> {name: (uuid, on|off)}."""
    out = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        name, uuid, state = line.rsplit(None, 2)
        out[name.strip()] = (uuid, state)
    return out
