"""Head-of-line blocking: status of domain B while domain A reboots, on real QEMU/TCG domains.

One private libvirtd (own network, mount and PID namespaces; RPC socket in the scratch dir)
runs two real QEMU/TCG domains, A and B. For each daemon in turn (xvmd, then Debian 12's
fence_virtd, alternating), each in its own lo-only network namespace, the real ``fence_xvm``
reboots A while a Python client asks for B's status every 100 ms, for the length of A's reboot
plus 1 s. Reported: B's latency (p50, p99, max), requests sent and answered, A's exit code and
reboot time, and whether A really runs again afterwards (a new domain id, ``virsh domstate``).

A single-threaded daemon answers B only after A's reboot; xvmd should answer B at once.

Run: ``.venv/bin/python -m bench.hol [--quick]`` (root; prints JSON on stdout, progress on
stderr). Needs fence-virt, fence-virtd, libvirt-daemon-system, qemu-system-x86.

Isolation: every packet stays inside namespaces created here (lo only); libvirtd listens only
on a unix socket in the scratch dir; its state, logs and QEMU capability cache are on tmpfs in
its private mount namespace (nothing reaches the host's /etc, /var or /run), and the ending of
its PID namespace takes any leftover QEMU down with it.

Why a PID namespace with a reaping init: where PID 1 does not reap orphans (as on this test
machine), a destroyed QEMU stays a zombie and libvirt waits for it to vanish; a destroy, and
each QEMU capability probe, then takes 35-80 s instead of 0.2-0.7 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xvmd.protocol.auth import Key
from xvmd.protocol.wire import Op

from . import tofence
from .client import probe_once
from .env import FENCE_XVM, Netns

REPO = Path(__file__).resolve().parents[1]
FENCE_VIRTD = "/usr/sbin/fence_virtd"
MODULE_PATH = "/usr/lib/x86_64-linux-gnu/fence-virt"
QEMU = "/usr/bin/qemu-system-x86_64"
GROUP = "225.0.0.12"
PORT = 1229
INTERVAL = 0.1
"""Seconds between two status requests for B."""
TAIL = 1.0
"""Seconds B keeps being asked after A's reboot returned."""
B_WAIT = 30.0
"""Seconds a B request waits for the daemon's callback before it counts as lost."""
REBOOT_T = 60
"""fence_xvm -t for A's reboot."""
GOAL_P99_MS = 50.0
FIRST_DEFINE_TIMEOUT = 600.0
TRIAL_SETTLE = 2.0
"""Seconds of quiet before each trial (a freshly started guest's BIOS burns CPU)."""

PRIVATE_DIRS = (
    "/run",
    "/etc/libvirt/qemu",
    "/var/lib/libvirt/qemu",
    "/var/log/libvirt/qemu",
    "/var/cache/libvirt/qemu",
)
"""Fresh tmpfs mounts in libvirtd's mount namespace: nothing it writes reaches the host."""

_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[hol {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _run(
    cmd: Sequence[str], timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> rc {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _stop_popen(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> None:
    """SIGTERM by PID, wait, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


# -- samples and statistics -------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One status request for B, as the prober saw it (times in monotonic seconds)."""

    i: int
    sent: float | None
    callback: float | None  # seconds from send until the daemon connected back
    latency: float | None  # seconds from send until the result byte; None: no answer (lost)
    result: int | None
    error: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sample:
        return cls(
            i=int(d["i"]),
            sent=d.get("sent"),
            callback=d.get("callback"),
            latency=d.get("latency"),
            result=d.get("result"),
            error=d.get("error"),
        )


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)


@dataclass(frozen=True)
class Stats:
    sent: int
    answered: int
    lost: int
    not_on: int  # answered, but not "on" (B runs all along)
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Stats:
        lat = [s.latency for s in samples if s.latency is not None]
        return cls(
            sent=len(samples),
            answered=len(lat),
            lost=len(samples) - len(lat),
            not_on=sum(1 for s in samples if s.latency is not None and s.result != 0),
            p50_ms=_ms(percentile(lat, 50)),
            p99_ms=_ms(percentile(lat, 99)),
            max_ms=_ms(max(lat) if lat else None),
            mean_ms=_ms(sum(lat) / len(lat) if lat else None),
        )


# -- the private libvirtd ----------------------------------------------------------------------


def _lv_init(directory: str) -> int:
    """PID 1 of libvirtd's PID namespace: mounts, virtlogd + libvirtd, reaps every orphan.

    A PID 1 that does not reap leaves destroyed QEMU processes as zombies, and libvirt then
    waits for them to go away (a destroy took 81 s that way). The scratch dir holds
    libvirtd.conf and qemu.conf (QEMU runs as root: with the stock libvirt-qemu user the
    capability cache never validates, since that user cannot open /dev/kvm).
    """
    d = Path(directory)
    for target in PRIVATE_DIRS:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
    subprocess.run(["mount", "--bind", str(d / "qemu.conf"), "/etc/libvirt/qemu.conf"], check=True)
    virtlogd = subprocess.Popen(["virtlogd"])
    libvirtd = subprocess.Popen(["libvirtd", "-f", str(d / "libvirtd.conf")])
    live = {virtlogd.pid, libvirtd.pid}

    def on_term(_signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(libvirtd.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while live:
        try:
            pid, _status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        live.discard(pid)
        if pid == libvirtd.pid and virtlogd.pid in live:
            os.kill(virtlogd.pid, signal.SIGTERM)
    return 0  # leaving PID 1 kills whatever is left in the namespace (QEMU included)


@dataclass
class PrivateLibvirtd:
    scratch: Path
    netns: Netns | None = None
    proc: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None
    dir: Path = field(init=False)
    uri: str = field(init=False)

    def __post_init__(self) -> None:
        self.dir = self.scratch / "libvirtd"
        sock_dir = self.dir / "sock"
        sock_dir.mkdir(parents=True)
        self.sock = sock_dir / "libvirt-sock"
        (self.dir / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{sock_dir}"\nunix_sock_rw_perms = "0770"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        )
        (self.dir / "qemu.conf").write_text('user = "root"\ngroup = "root"\n')
        self.uri = f"qemu+unix:///system?socket={self.sock}"

    def start(self, timeout: float = 30.0) -> None:
        self.netns = Netns("hol-lv")
        inner = [sys.executable, "-m", "bench.hol", "_lvinit", str(self.dir)]
        with open(self.dir / "libvirtd.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.netns.cmd(
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--kill-child=SIGKILL",
                    *inner,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            if self.init_pid is None:
                with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                    self.init_pid = int(children.read_text().split()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited:\n{self.log()}")
            if self.sock.exists() and self.virsh("uri", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"libvirtd not up after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return (self.dir / "libvirtd.log").read_text(errors="replace")[-4000:]

    def virsh(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return _run(["virsh", "-c", self.uri, *args], timeout=timeout, check=check)

    def domstate(self, name: str) -> str:
        return self.virsh("domstate", name, check=False).stdout.strip()

    def domid(self, name: str) -> str:
        return self.virsh("domid", name, check=False).stdout.strip()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None and self.init_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.init_pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                if self.init_pid is not None:  # SIGKILL on a PID namespace's init ends it all
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
                _stop_popen(self.proc, 10)
        if self.netns is not None:
            self.netns.close()
            self.netns = None


def domain_xml(name: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
        "<on_poweroff>destroy</on_poweroff>"
        f"<devices><emulator>{QEMU}</emulator><video><model type='none'/></video>"
        "<memballoon model='none'/></devices></domain>\n"
    )


# -- the daemons under test --------------------------------------------------------------------


@dataclass
class Daemon:
    name: str
    netns: Netns
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> list[str]:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()

    def fence_xvm(self, key: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = [FENCE_XVM, "-a", GROUP, "-p", str(PORT), "-k", str(key), *args]
        return _run(self.netns.cmd(*cmd), timeout=timeout, check=False)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_popen(self.proc, 15)
        self.netns.close()


def _xvmd_supports(option: str) -> bool:
    out = _run([sys.executable, "-m", "xvmd", "--help"], check=False).stdout
    return option in out


def start_xvmd(scratch: Path, key: Path, uri: str) -> Daemon:
    """xvmd as the brief runs it (non-cluster mode, no cluster.conf), libvirt backend."""
    ns = Netns("hol-x")
    args = ["--local", "--no-ccs", "-k", str(key), "-I", "lo", "-p", str(PORT)]
    args += ["--control", str(scratch / "x.sock"), "-U", uri]
    if _xvmd_supports("--audit"):  # keep its audit trail in the scratch dir
        args += ["--audit", str(scratch / "xvmd-audit.jsonl")]
    d = Daemon("xvmd", ns, scratch / "xvmd.log")
    try:
        with open(d.log_path, "wb") as log:
            d.proc = subprocess.Popen(
                ns.cmd(sys.executable, "-m", "xvmd", *args),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        _wait_ready(d, timeout=30)
    except BaseException:
        d.stop()
        raise
    return d


def _wait_ready(d: Daemon, timeout: float) -> None:
    """Until xvmd logs that it is ready (it exits on a start-up error)."""
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = d.log_path.read_text(errors="replace")
        if "xvmd ready" in log:
            return
        if d.proc.poll() is not None:
            raise RuntimeError(f"xvmd exited with {d.proc.returncode}:\n{log}")
        time.sleep(0.02)
    raise RuntimeError(f"xvmd not ready after {timeout}s:\n{d.log_path.read_text()}")


def start_fence_virtd(scratch: Path, key: Path, uri: str, b: str) -> Daemon:
    """Debian's fence_virtd with its libvirt backend; ready once it answers B's status."""
    conf = scratch / "fence_virt.conf"
    conf.write_text(
        'fence_virtd {\n listener = "multicast";\n backend = "libvirt";\n'
        f' module_path = "{MODULE_PATH}";\n}}\n'
        "listeners {\n multicast {\n"
        f'  key_file = "{key}";\n  address = "{GROUP}";\n  interface = "lo";\n'
        f'  port = "{PORT}";\n  family = "ipv4";\n  hash = "sha256";\n  auth = "sha256";\n'
        " }\n}\n"
        f'backends {{\n libvirt {{\n  uri = "{uri}";\n }}\n}}\n'
    )
    conf.chmod(0o600)  # fence_virtd would chmod it itself, with a warning
    ns = Netns("hol-f")
    d = Daemon("fence_virtd", ns, scratch / "fence_virtd.log")
    with open(d.log_path, "wb") as log:
        d.proc = subprocess.Popen(
            ns.cmd(
                "stdbuf",
                "-o0",
                "-e0",
                FENCE_VIRTD,
                "-F",
                "-d",
                "1",
                "-f",
                str(conf),
                "-p",
                str(scratch / "fence_virtd.pid"),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if d.proc.poll() is not None:
                raise RuntimeError(f"fence_virtd exited: {d.log_path.read_text(errors='replace')}")
            if d.fence_xvm(key, "-o", "status", "-H", b, "-t", "3", timeout=20).returncode == 0:
                return d
            time.sleep(0.2)
        raise RuntimeError(f"fence_virtd not answering: {d.log_path.read_text(errors='replace')}")
    except BaseException:
        d.stop()
        raise


# -- the B prober (runs inside a daemon's namespace) -------------------------------------------


def _probe(argv: Sequence[str]) -> int:
    """``_probe``: ask for a domain's status every INTERVAL between ``go`` and ``stop`` on stdin.

    Each request has its own callback listener and thread, so a slow answer never delays the
    next request. Prints one JSON list: send time (monotonic), latency (None: lost), result.
    """
    p = argparse.ArgumentParser(prog="bench.hol _probe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--interval", type=float, default=INTERVAL)
    p.add_argument("--wait", type=float, default=B_WAIT)
    a = p.parse_args(argv)
    key = Key(Path(a.key).read_bytes()[:4096])
    samples: list[dict[str, object]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        r = probe_once(key, Op.STATUS, a.domain, (GROUP, a.port), a.wait)
        rec: dict[str, object] = {
            "i": i,
            "sent": r.sent,
            "callback": r.callback,
            "latency": r.latency,
            "result": r.result,
        }
        if r.error:
            rec["error"] = r.error
        with lock:
            samples.append(rec)

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    stop = threading.Event()

    def wait_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stop, daemon=True).start()
    threads: list[threading.Thread] = []
    t0 = time.monotonic()
    i = 0
    while True:
        delay = t0 + i * a.interval - time.monotonic()
        if (delay > 0 and stop.wait(delay)) or stop.is_set():
            break
        th = threading.Thread(target=one, args=(i,))
        th.start()
        threads.append(th)
        i += 1
    for th in threads:
        th.join()
    samples.sort(key=lambda r: int(str(r["i"])))
    print(json.dumps(samples), flush=True)
    return 0


def _readline(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """One line from the prober's stdout within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        _stop_popen(proc, 5)
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"prober gave no {what} (rc {proc.returncode}): {err[-2000:]}")
    return line


# -- one trial ---------------------------------------------------------------------------------


@dataclass
class Lab:
    key: Path
    lv: PrivateLibvirtd
    a: str
    b: str


_ELAPSED = re.compile(r" in (\d+) ms: ")


@dataclass
class Trial:
    daemon: str
    round: int
    warmup_rc: int
    a_rc: int
    a_output: str
    t0: float  # A's reboot: fence_xvm started (monotonic)
    t1: float  # ... and returned
    a_state_at_return: str
    a_state_after: str
    a_domid: tuple[str, str]  # before, after
    b_untouched: bool  # B kept running, same domain id
    samples: list[Sample]
    log: list[str]  # the daemon's log lines written during the trial

    @property
    def a_seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def a_restarted(self) -> bool:
        """A runs, under a new domain id: it really went down and came back."""
        before, after = self.a_domid
        return self.a_state_after == "running" and after not in ("", "-", before)

    @property
    def during(self) -> list[Sample]:
        return [s for s in self.samples if s.sent is not None and self.t0 <= s.sent <= self.t1]

    def missed(self, stats: Stats) -> bool:
        if stats.lost or stats.not_on or self.a_rc != 0 or not self.a_restarted:
            return True
        return self.daemon == "xvmd" and (stats.p99_ms is None or stats.p99_ms >= GOAL_P99_MS)

    def to_dict(self) -> dict[str, object]:
        b = Stats.of(self.samples)
        slow = sorted(
            (s for s in self.samples if s.latency is not None),
            key=lambda s: s.latency or 0.0,
            reverse=True,
        )[:3]
        out: dict[str, object] = {
            "daemon": self.daemon,
            "round": self.round,
            "warmup_status_rc": self.warmup_rc,
            "a_reboot_rc": self.a_rc,
            "a_reboot_s": round(self.a_seconds, 3),
            "a_state_at_return": self.a_state_at_return,
            "a_state_after": self.a_state_after,
            "a_domid_before_after": list(self.a_domid),
            "a_restarted": self.a_restarted,
            "b_untouched": self.b_untouched,
            "b": asdict(b),
            "b_during_reboot": asdict(Stats.of(self.during)),
            "b_latencies_ms": [_ms(s.latency) for s in self.samples],
            "b_slowest": [
                {
                    "i": s.i,
                    "sent_after_reboot_start_ms": _ms((s.sent or self.t0) - self.t0),
                    "callback_ms": _ms(s.callback),
                    "latency_ms": _ms(s.latency),
                }
                for s in slow
            ],
        }
        if self.missed(b):
            out["a_reboot_output"] = self.a_output[-300:]
            errors = [s.error for s in self.samples if s.error]
            if errors:
                out["b_errors"] = errors[:10]
            if self.daemon == "xvmd":
                # The request lines that matter: A's reboot and every slow answer.
                out["daemon_log"] = [
                    line
                    for line in self.log
                    if " reboot " in line
                    or not line.startswith("20")
                    or " WARNING " in line
                    or " ERROR " in line
                    or ((m := _ELAPSED.search(line)) and int(m.group(1)) >= GOAL_P99_MS)
                ][-40:]
            else:
                out["daemon_log"] = self.log[-40:]
        return out


def _ensure_running(lab: Lab) -> None:
    for name in (lab.a, lab.b):
        state = lab.lv.domstate(name)
        if state != "running":
            say(f"{name} is {state!r}; starting it")
            lab.lv.virsh("start", name, timeout=120)


def trial(lab: Lab, d: Daemon, round_no: int) -> Trial:
    """Reboot A through ``d`` with the real fence_xvm while the prober asks for B's status."""
    _ensure_running(lab)
    time.sleep(TRIAL_SETTLE)
    warm = d.fence_xvm(lab.key, "-o", "status", "-H", lab.b, "-t", "10", timeout=30)
    a_id, b_id = lab.lv.domid(lab.a), lab.lv.domid(lab.b)
    offset = d.log_size()
    probe = [sys.executable, "-m", "bench.hol", "_probe", "--port", str(PORT)]
    probe += ["--key", str(lab.key), "--domain", lab.b]
    prober = subprocess.Popen(
        d.netns.cmd(*probe),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert prober.stdin is not None
        if _readline(prober, 30, "ready line").strip() != "ready":
            raise RuntimeError("prober did not say ready")
        prober.stdin.write("go\n")
        prober.stdin.flush()
        t0 = time.monotonic()
        reboot = d.fence_xvm(
            lab.key, "-o", "reboot", "-H", lab.a, "-t", str(REBOOT_T), timeout=REBOOT_T + 30
        )
        t1 = time.monotonic()
        a_state_at_return = lab.lv.domstate(lab.a)
        time.sleep(max(0.0, t1 + TAIL - time.monotonic()))
        prober.stdin.write("stop\n")
        prober.stdin.flush()
        out = _readline(prober, B_WAIT + 40, "result")
        prober.wait(30)
    finally:
        _stop_popen(prober, 5)
    return Trial(
        daemon=d.name,
        round=round_no,
        warmup_rc=warm.returncode,
        a_rc=reboot.returncode,
        a_output=(reboot.stdout + reboot.stderr).strip(),
        t0=t0,
        t1=t1,
        a_state_at_return=a_state_at_return,
        a_state_after=lab.lv.domstate(lab.a),
        a_domid=(a_id, lab.lv.domid(lab.a)),
        b_untouched=lab.lv.domid(lab.b) == b_id and lab.lv.domstate(lab.b) == "running",
        samples=[Sample.from_json(x) for x in json.loads(out)],
        log=d.log_since(offset),
    )


# -- the scenario ------------------------------------------------------------------------------


def _summary(trials: Sequence[Trial]) -> dict[str, object]:
    pooled = Stats.of([s for t in trials for s in t.samples])
    return {
        "trials": len(trials),
        "b": asdict(pooled),
        "b_during_reboot": asdict(Stats.of([s for t in trials for s in t.during])),
        "b_p99_ms_per_trial": [Stats.of(t.samples).p99_ms for t in trials],
        "a_reboot_rc": [t.a_rc for t in trials],
        "a_reboot_s": [round(t.a_seconds, 3) for t in trials],
        "a_running_again": all(t.a_restarted for t in trials),
        "b_untouched": all(t.b_untouched for t in trials),
    }


def _setup_lab(
    lv: PrivateLibvirtd, scratch: Path, names: Sequence[str], defined: list[str]
) -> dict[str, float]:
    times: dict[str, float] = {}
    t = time.monotonic()
    lv.start()
    times["libvirtd_up_s"] = round(time.monotonic() - t, 2)
    say(f"libvirtd up: {lv.uri}")
    for n, name in enumerate(names):
        xml = scratch / f"{name}.xml"
        xml.write_text(domain_xml(name))
        t = time.monotonic()
        # The first define may probe QEMU's capabilities (a minute or more, cached afterwards).
        lv.virsh("define", str(xml), timeout=FIRST_DEFINE_TIMEOUT)
        defined.append(name)
        times[f"define_{'ab'[n]}_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        lv.virsh("start", name, timeout=120)
        times[f"start_{'ab'[n]}_s"] = round(time.monotonic() - t, 2)
    return times


def _teardown(daemons: Sequence[Daemon], lv: PrivateLibvirtd, defined: Sequence[str]) -> None:
    for d in daemons:
        try:
            d.stop()
        except Exception as exc:
            say(f"stopping {d.name}: {exc}")
    if lv.proc is not None and lv.proc.poll() is None:
        for name in defined:
            try:
                if lv.domstate(name) not in ("shut off", ""):
                    lv.virsh("destroy", name, check=False)
                lv.virsh("undefine", name, check=False)
            except Exception as exc:
                say(f"removing domain {name}: {exc}")
    lv.stop()


def run(quick: bool = False) -> dict[str, object]:
    """The head-of-line scenario: 3 rounds per daemon (1 with ``quick``), daemons alternating."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network, mount and PID namespaces)")
    for tool in (FENCE_XVM, FENCE_VIRTD, QEMU, "/usr/sbin/libvirtd", "/usr/sbin/virtlogd"):
        if not os.path.exists(tool):
            raise RuntimeError(f"missing {tool}")
    rounds = 1 if quick else 3
    scratch = Path(tempfile.mkdtemp(prefix="hol-", dir="/tmp"))
    scratch.chmod(0o755)
    key = scratch / "fence_xvm.key"
    key.write_bytes(os.urandom(4096))
    key.chmod(0o600)
    a, b = f"hol-a-{os.getpid()}", f"hol-b-{os.getpid()}"
    lv = PrivateLibvirtd(scratch)
    defined: list[str] = []
    daemons: dict[str, Daemon] = {}
    trials: list[Trial] = []
    try:
        setup = _setup_lab(lv, scratch, (a, b), defined)
        say(f"domains {a}, {b} running: {setup}")
        daemons["xvmd"] = start_xvmd(scratch, key, lv.uri)
        daemons["fence_virtd"] = start_fence_virtd(scratch, key, lv.uri, b)
        lab = Lab(key, lv, a, b)
        for r in range(rounds):
            for name in ("xvmd", "fence_virtd") if r % 2 == 0 else ("fence_virtd", "xvmd"):
                t = trial(lab, daemons[name], r)
                trials.append(t)
                b_stats = Stats.of(t.samples)
                say(
                    f"round {r} {name}: A rc {t.a_rc} in {t.a_seconds:.2f} s, A restarted "
                    f"{t.a_restarted}; B sent {b_stats.sent} answered {b_stats.answered} "
                    f"p50 {b_stats.p50_ms} p99 {b_stats.p99_ms} max {b_stats.max_ms} ms"
                )
        # The same lab, the same daemons: how long a fence takes (bench/tofence.py).
        fencing = tofence.run_trials(lab, daemons, rounds, say)
    finally:
        _teardown(list(daemons.values()), lv, defined)
        if os.environ.get("HOL_KEEP_SCRATCH") == "1":
            say(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    xv = [t for t in trials if t.daemon == "xvmd"]
    fv = [t for t in trials if t.daemon == "fence_virtd"]
    xs, fs = (
        Stats.of([s for t in xv for s in t.samples]),
        Stats.of([s for t in fv for s in t.samples]),
    )
    ratio = round(xs.p99_ms / fs.p99_ms, 4) if xs.p99_ms is not None and fs.p99_ms else None
    goals = {
        "xvmd_b_p99_under_50ms": xs.p99_ms is not None and xs.p99_ms < GOAL_P99_MS,
        "xvmd_b_none_lost": xs.sent > 0 and xs.lost == 0 and xs.not_on == 0,
        "xvmd_a_running_again": bool(xv) and all(t.a_rc == 0 and t.a_restarted for t in xv),
    }
    return {
        "scenario": "head-of-line",
        "quick": quick,
        "rounds": rounds,
        "b_interval_ms": INTERVAL * 1000,
        "b_tail_s": TAIL,
        "setup": setup,
        "daemons": {"xvmd": _summary(xv), "fence_virtd": _summary(fv)},
        "ratio_b_p99_xvmd_over_fence_virtd": ratio,
        "goals": {**goals, "met": all(goals.values())},
        "trials": [t.to_dict() for t in trials],
        "time_to_fence": fencing,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_lvinit"]:
        return _lv_init(args[1])
    if args[:1] == ["_probe"]:
        return _probe(args[1:])
    p = argparse.ArgumentParser(prog="python -m bench.hol", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one round per daemon instead of three")
    ns = p.parse_args(args)
    print(json.dumps(run(quick=ns.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
