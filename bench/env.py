"""The bench environment: lo-only network namespaces, the two daemons, the in-namespace agent.

Network rule: every packet stays inside a namespace created here, which holds nothing but ``lo``.
Every process is started here and stopped by its own PID; every namespace is deleted in a
``finally`` (``Env.close``).
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
DOMAINS_XML = FIXTURES / "domains.xml"
FENCE_XVM = "/usr/sbin/fence_xvm"
FENCE_VIRTD = "/usr/sbin/fence_virtd"
MODULE_PATH = "/usr/lib/x86_64-linux-gnu/fence-virt"
GROUP = "225.0.0.12"
PORT = 1229
CLK_TCK = os.sysconf("SC_CLK_TCK")

_T0 = time.monotonic()
_names = itertools.count()


def say(msg: str) -> None:
    """Progress on stderr, with seconds since the bench started."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], timeout: float = 30, check: bool = True) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# -- /proc readings ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads, dead ones included)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_split(pid: int) -> tuple[float, float, int]:
    """(user s, system s, context switches of all live threads) of a process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    switches += int(line.split()[1])
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, switches


def cpu_idle(seconds: float = 2.0) -> float:
    """Share of the machine's CPU time that was idle over ``seconds`` (other load shows here)."""

    def sample() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return vals[3] + vals[4], sum(vals)

    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return (i1 - i0) / max(t1 - t0, 1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def byte_compile() -> None:
    """Write xvmd's bytecode before any daemon starts, as installing the package does
    (Debian's py3compile): without it every start compiles ~90 modules (~100 ms), and a
    machine with PYTHONDONTWRITEBYTECODE set would pay that on every start."""
    for package in ("xvmd", "ccs"):
        compileall.compile_dir(str(REPO / package), quiet=1)


def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    fv = run(["dpkg-query", "-W", "-f=${Version}", "fence-virtd"], check=False) or "?"
    lv = run(["dpkg-query", "-W", "-f=${Version}", "libvirt0"], check=False) or "?"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "fence_virtd": fv,
        "libvirt": lv,
        "memory": _meminfo(),
    }


def _meminfo() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) // 1024} MiB"
    return "?"


# -- files ------------------------------------------------------------------------------------

_TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


def expected_status(xml: Path) -> dict[str, int]:
    """Domain name -> the status result byte a correct daemon answers (shut off: 2, else 0)."""
    out: dict[str, int] = {}
    for m in re.finditer(r"<domain\b.*?</domain>", xml.read_text(), re.S):
        name = re.search(r"<name>([^<]*)</name>", m.group(0))
        state = re.search(r"runstate>(\d+)<", m.group(0))
        if name:
            out[name.group(1)] = 2 if state and state.group(1) == "5" else 0
    return out


def write_domains(path: Path, count: int, off_every: int = 5) -> Path:
    """A test-driver node with ``count`` domains ``vm-00001``…; every ``off_every``-th shut off."""
    parts = [f"<node xmlns:test='{_TEST_NS}'>"]
    for i in range(1, count + 1):
        state = "<test:runstate>5</test:runstate>" if i % off_every == 0 else ""
        parts.append(
            f"<domain type='test'><name>vm-{i:05d}</name>"
            f"<uuid>{i:08x}-0000-4000-8000-{i:012x}</uuid><memory>65536</memory>"
            f"<os><type>hvm</type></os>{state}</domain>"
        )
    parts.append("</node>\n")
    path.write_text("\n".join(parts))
    return path


def write_key(path: Path, size: int = 4096) -> Path:
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    return path


# -- namespaces and processes -----------------------------------------------------------------


class Netns:
    """A fresh network namespace holding only ``lo`` (up)."""

    def __init__(self, label: str) -> None:
        self.name = f"xvb-{label}-{os.getpid()}-{next(_names)}"
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        # Long runs leave tens of thousands of callbacks in TIME_WAIT: a wide ephemeral range
        # (per namespace) for the daemons' connect-backs, above the load generator's
        # callback ports (loadgen.CALLBACK_PORTS) and clear of 1229.
        run(self.cmd("sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=30000 65000"))

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def udp_drops(self, port: int) -> int:
        """Kernel drops (receive buffer full) on the UDP sockets bound to ``port``."""
        total = 0
        for line in run(self.cmd("cat", "/proc/net/udp")).splitlines()[1:]:
            cols = line.split()
            if int(cols[1].split(":")[1], 16) == port:
                total += int(cols[-1])
        return total

    def close(self) -> None:
        for pid in run(["ip", "netns", "pids", self.name], check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", self.name], check=False)


def agent(ns: Netns, args: Sequence[str], timeout: float, *, what: str = "agent") -> dict[str, Any]:
    """Run ``python -m bench.agent ARGS`` inside ``ns``; its stdout's last line is JSON."""
    proc = subprocess.run(
        ns.cmd(sys.executable, "-m", "bench.agent", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@dataclass
class Daemon:
    """One daemon under test in its own namespace; subclasses say how to start it."""

    label: str
    scratch: Path
    key: Path
    domains: Path
    port: int = PORT
    ns: Netns = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    ready_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.ns = Netns(self.label)
        self.log_path = self.scratch / f"{self.label}-{self.ns.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, ready_target: str = "vm-01", timeout: float = 30.0) -> float:
        """Start the daemon; returns seconds from spawn until it answered a status request."""
        probe = subprocess.Popen(
            self.ns.cmd(
                sys.executable, "-m", "bench.agent", "poll", "--port", str(self.port),
                "--key", str(self.key), "--target", ready_target, "--expect", "0,2",
                "--interval", "0.005", "--timeout", str(timeout),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )  # fmt: skip
        try:
            assert probe.stdout is not None
            if probe.stdout.readline().strip() != "armed":
                raise RuntimeError(f"ready probe failed: {probe.communicate()[1]}")
            t0 = time.monotonic()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.ns.cmd(*self.command()), stdout=log, stderr=subprocess.STDOUT, cwd=REPO
                )
            out, err = probe.communicate(timeout=timeout + 10)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
        if probe.returncode != 0:
            self.stop()
            raise RuntimeError(f"{self.label} not ready: {err.strip()}\n{self.log()[-3000:]}")
        self.ready_s = float(json.loads(out.strip().splitlines()[-1])["at"]) - t0
        return self.ready_s

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float, int]:
        return cpu_split(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self.signal_stop()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.ns.close()

    def fence_xvm(self, *args: str) -> list[str]:
        """The stock client's command line against this daemon (run it inside ``self.ns``)."""
        return [
            FENCE_XVM, "-a", GROUP, "-p", str(self.port), "-k", str(self.key), "-t", "5", *args,
        ]  # fmt: skip


@functools.cache
def xvmd_help() -> str:
    """``xvmd --help``: options differ between versions of the tree being measured."""
    return run([sys.executable, "-m", "xvmd", "--help"], check=False)


@dataclass
class Xvmd(Daemon):
    config: Path | None = None  # cluster.conf; None: --no-ccs with -k

    @property
    def control(self) -> Path:
        return self.scratch / f"{self.ns.name}.sock"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "xvmd", "--local", "-I", "lo", "-p", str(self.port)]
        cmd += ["--control", str(self.control)]
        if "--audit" in xvmd_help():  # keep the audit trail (on by default) in the scratch dir
            cmd += ["--audit", str(self.scratch / f"{self.ns.name}-audit.jsonl")]
        cmd += ["-U", f"test://{self.domains}"]
        if self.config is None:
            return [*cmd, "--no-ccs", "-k", str(self.key)]
        return [*cmd, "-f", str(self.config)]


@dataclass
class FenceVirtd(Daemon):
    debug: int = 0

    def command(self) -> list[str]:
        conf = self.scratch / f"{self.ns.name}.conf"
        conf.write_text(
            f'fence_virtd {{ listener = "multicast"; backend = "libvirt"; '
            f'module_path = "{MODULE_PATH}"; }}\n'
            f'listeners {{ multicast {{ key_file = "{self.key}"; address = "{GROUP}"; '
            f'interface = "lo"; port = "{self.port}"; family = "ipv4"; hash = "sha256"; '
            f'auth = "sha256"; }} }}\n'
            f'backends {{ libvirt {{ uri = "test://{self.domains}"; }} }}\n'
        )
        return ["stdbuf", "-o0", "-e0", FENCE_VIRTD, "-F", "-d", str(self.debug), "-f", str(conf)]


class Env:
    """Scratch directory and shared key; tracks every daemon so ``close`` can stop them all."""

    def __init__(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="xvmd-bench-"))
        self.key = write_key(self.scratch / "fence_xvm.key")
        self.daemons: list[Daemon] = []

    def xvmd(self, domains: Path = DOMAINS_XML, config: Path | None = None) -> Xvmd:
        d = Xvmd("xvmd", self.scratch, self.key, domains, config=config)
        self.daemons.append(d)
        return d

    def fence_virtd(self, domains: Path = DOMAINS_XML) -> FenceVirtd:
        d = FenceVirtd("fvd", self.scratch, self.key, domains)
        self.daemons.append(d)
        return d

    def stop(self, *daemons: Daemon) -> None:
        """Stop several daemons at once (fence_virtd needs ~1.5 s after SIGTERM) and drop them."""
        for d in daemons:
            d.signal_stop()
        for d in daemons:
            try:
                d.close()
            finally:
                if d in self.daemons:
                    self.daemons.remove(d)

    def close(self) -> None:
        try:
            self.stop(*self.daemons)
        finally:
            for d in list(self.daemons):
                d.ns.close()
