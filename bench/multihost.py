"""Multi-host cost: what serving one guest cluster from three hosts costs a request.

The lab of ``tests/support/chaos.py``: three hosts and a guest on one bridge, each host with
real corosync, a private libvirtd (test driver over ``test+unix``) and xvmd in cluster mode;
the guest cluster's VMs vm-1..vm-4 run on hosts 1, 2, 3 and 1. Every request reaches all three
hosts; only the VM's owner connects back. Measured:

- **latency**: the stock ``fence_xvm -o status`` from the guest, end to end;
- **load**: status requests from the wire-protocol load generator, 16 in flight, round-robin
  over the four VMs (so over three answering hosts);
- **migration**: a VM is shut off on its host and started on another (what a migration looks
  like to the hosts); a prober asks for its status every 10 ms, and the figure is the time
  from the start returning on the new host to the first ``running`` answered by that host;
  answers older than the hypervisors' truth (``off`` for a request sent after the start) are
  counted.

The baseline, in the same lab: the group's daemons stop and one ``xvmd --local`` serves host
1's VMs, then Debian's ``fence_virtd`` does (libvirt backend, the same URI), for the same
latency and load.

Run: ``.venv/bin/python -m bench.multihost [--quick]`` (root; JSON on stdout). Needs corosync,
libvirt-daemon, fence-virt and fence-virtd.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.chaos import DEVICE, GUEST, PORT, ChaosLab
from tests.support.corosync_lab import Lab, Node
from tests.support.harness import Xvmd
from tests.support.multihost_lab import GROUP, Hypervisor
from xvmd.protocol.auth import Key

from .env import cpu_seconds
from .stats import Goal, summary

REPO = Path(__file__).resolve().parents[1]
FENCE_VIRTD = "/usr/sbin/fence_virtd"
MODULE_PATH = "/usr/lib/x86_64-linux-gnu/fence-virt"
MOVES = ((4, 1, 2), (4, 2, 3), (4, 3, 1))
"""(VM number, from host, to host) of the migration trials."""


def say(msg: str) -> None:
    print(f"[multihost] {msg}", file=sys.stderr, flush=True)


# -- measurements from the guest --------------------------------------------------------------


def _agent(world: ChaosLab, *args: str, timeout: float) -> dict[str, Any]:
    cmd = world.guest.cmd(sys.executable, "-m", "bench.agent", *args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"bench.agent {args[0]}: {res.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def latency(world: ChaosLab, targets: Sequence[str], runs: int) -> dict[str, Any]:
    times: list[float] = []
    for target in targets:
        fx = ["/usr/sbin/fence_xvm", "-a", GROUP, "-p", str(PORT), "-k", str(world.key)]
        fx += ["-t", "5", "-o", "status", "-H", target]
        got = _agent(world, "timeit", "--runs", str(runs), "--warmup", "2", "--", *fx, timeout=120)
        if any(rc != 0 for rc in got["rc"]):
            raise RuntimeError(f"status {target}: exit codes {got['rc']}")
        times += got["latency_ms"]
    return {**summary(times), "targets": list(targets)}


def _cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def load(
    world: ChaosLab, targets: Sequence[str], count: int, pids: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    """The load generator in the guest; CPU of each group of ``pids`` per answered request."""
    before = {name: _cpu(p) for name, p in pids.items()}
    got = _load(world, targets, count)
    got.pop("latency_ms", None)
    if got["ok"]:
        got["cpu_us_per_req"] = {
            name: round((_cpu(p) - before[name]) / got["ok"] * 1e6, 1) for name, p in pids.items()
        }
    return got


def _load(world: ChaosLab, targets: Sequence[str], count: int) -> dict[str, Any]:
    expect = ",".join(f"{t}=0" for t in targets)
    args = ["load", "--port", str(PORT), "--key", str(world.key), "--domains", "-"]
    args += ["--expect", expect, "--count", str(count), "--concurrency", "16"]
    args += ["--address", GUEST, "--max-seconds", "120"]
    return _agent(world, *args, timeout=200)


# -- migration: the prober runs in the guest ---------------------------------------------------


def _ask(key: Key, node: str, wait: float) -> tuple[int | None, str]:
    """One status request; (result, the answering host's address)."""
    from tests.support.pyclient import exchange
    from xvmd.protocol.client import build_request
    from xvmd.protocol.wire import HashType, Op

    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        listener.bind((GUEST, 0))
        listener.listen(4)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(GUEST))
        pkt = build_request(
            Op.STATUS, node, key=key, hashtype=HashType.SHA256, address=GUEST,
            port=listener.getsockname()[1], seqno=int.from_bytes(os.urandom(4), "big") >> 1,
            salt=os.urandom(6),
        )  # fmt: skip
        sender.sendto(pkt, (GROUP, PORT))
        ready, _, _ = select.select([listener], [], [], wait)
        if not ready:
            return None, ""
        conn, peer = listener.accept()
        with conn:
            conn.settimeout(5)
            return exchange(conn, key, HashType.SHA256, Op.STATUS).result, str(peer[0])


def prober(key_path: str, node: str, seconds: float, interval: float) -> None:
    """Guest side: status of ``node`` every ``interval`` for ``seconds``; JSON on stdout."""
    key = Key(Path(key_path).read_bytes())
    print("ready", flush=True)
    samples = []
    end = time.monotonic() + seconds
    while (sent := time.monotonic()) < end:
        result, peer = _ask(key, node, 1.0)
        samples.append({"sent": sent, "at": time.monotonic(), "result": result, "peer": peer})
        time.sleep(max(0.0, sent + interval - time.monotonic()))
    print(json.dumps(samples), flush=True)


def migrate(world: ChaosLab, vm: int, src: int, dst: int) -> dict[str, Any]:
    node = f"node{vm}"
    cmd = world.guest.cmd(sys.executable, "-m", "bench.multihost", "_probe", str(world.key), node)
    probe = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert probe.stdout is not None
    if probe.stdout.readline().strip() != "ready":
        raise RuntimeError("the migration prober did not start")
    time.sleep(0.5)
    t_off = time.monotonic()
    world.hosts[src].hv.virsh("destroy", f"vm-{vm}")
    world.hosts[dst].hv.virsh("start", f"vm-{vm}")
    t_on = time.monotonic()
    out, _ = probe.communicate(timeout=30)
    samples = json.loads(out.strip().splitlines()[-1])
    new = f"10.77.0.{dst}"
    after = [s for s in samples if s["sent"] >= t_on]
    first = next((s for s in after if s["result"] == 0 and s["peer"] == new), None)
    running = next((s for s in after if s["result"] == 0), None)
    return {
        "vm": f"vm-{vm}", "from": src, "to": dst,
        "off_to_on_s": round(t_on - t_off, 4),
        "first_correct_s": round(first["at"] - t_on, 4) if first else None,
        "first_running_s": round(running["at"] - t_on, 4) if running else None,
        "stale_after_start": sum(1 for s in after if s["result"] not in (0, None)),
        "lost": sum(1 for s in samples if s["result"] is None),
        "before_move_ok": all(
            s["result"] == 0 and s["peer"] == f"10.77.0.{src}" for s in samples if s["at"] < t_off
        ),
        "samples": len(samples),
    }  # fmt: skip


# -- the single-host baseline ------------------------------------------------------------------


def _fence_virtd(node: Node, key: Path) -> subprocess.Popen[bytes]:
    conf = node.scratch / "fence_virt.conf"
    conf.write_text(
        f'fence_virtd {{ listener = "multicast"; backend = "libvirt"; module_path = '
        f'"{MODULE_PATH}"; }}\nlisteners {{ multicast {{ key_file = "{key}"; address = '
        f'"{GROUP}"; interface = "eth0"; port = "{PORT}"; family = "ipv4"; hash = "sha256"; '
        f'auth = "sha256"; }} }}\nbackends {{ libvirt {{ uri = "{Hypervisor.URI}"; }} }}\n'
    )
    conf.chmod(0o600)
    log = open(node.scratch / "fence_virtd.log", "ab")  # noqa: SIM115 (the process keeps it)
    cmd = node.cmd("stdbuf", "-o0", "-e0", FENCE_VIRTD, "-F", "-d", "1", "-f", str(conf))
    pid = str(node.scratch / "fvd.pid")
    return subprocess.Popen([*cmd, "-p", pid], stdout=log, stderr=log)


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout}s")
        time.sleep(0.2)


def baseline(world: ChaosLab, runs: int, count: int) -> dict[str, Any]:
    """One host alone: xvmd --local, then fence_virtd, serving host 1's VMs vm-1 and vm-4."""
    for host in world.hosts.values():
        if host.xvmd is not None:
            host.xvmd.stop()
    node = world.hosts[1].node
    args = ["--local", "--no-ccs", "-k", str(world.key), "-I", "eth0", "-p", str(PORT)]
    args += ["-U", Hypervisor.URI, "--control", str(node.scratch / "single.sock")]
    out: dict[str, Any] = {}
    single = Xvmd(node, args, node.scratch / "single.log", port=PORT).start(ready_timeout=30)
    try:
        out["xvmd"] = {
            "latency": latency(world, ["vm-1"], runs),
            "load": load(
                world, ["vm-1", "vm-4"], count, {"xvmd": [single.proc.pid] if single.proc else []}
            ),
        }
    finally:
        single.stop()
    fvd = _fence_virtd(node, world.key)
    try:
        _until(lambda: _answers(world, "vm-1"), 30, "fence_virtd")
        out["fence_virtd"] = {
            "latency": latency(world, ["vm-1"], runs),
            "load": load(world, ["vm-1", "vm-4"], count, {"fence_virtd": [fvd.pid]}),
        }
    finally:
        fvd.terminate()
        fvd.wait(15)
    return out


def _answers(world: ChaosLab, target: str) -> bool:
    try:
        got = _agent(world, "timeit", "--runs", "1", "--", "/usr/sbin/fence_xvm", "-a", GROUP,
                     "-p", str(PORT), "-k", str(world.key), "-t", "2", "-o", "status", "-H",
                     target, timeout=30)  # fmt: skip
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return bool(got["rc"] == [0])


# -- the scenario -------------------------------------------------------------------------------


def goals(res: Mapping[str, Any]) -> list[dict[str, object]]:
    """Right answers from the group, and a migrated VM answered for by its new host at once."""
    group = res["group"]["load"]
    bad = group["lost"] + group["wrong"]
    moves = res["migration"]
    firsts = [m["first_correct_s"] for m in moves]
    worst = max((f for f in firsts if f is not None), default=None)
    stale = sum(m["stale_after_start"] for m in moves)
    return [
        Goal("multihost", "3 hosts, 16 in flight: lost or wrong answers", str(bad), "0",
             bad == 0).asdict(),
        Goal("multihost", "migration: start on the new host -> its first answer, worst (s)",
             str(worst), "< 1", None not in firsts and worst is not None and worst < 1).asdict(),
        Goal("multihost", "migration: answers older than the hypervisors' truth", str(stale),
             "0", stale == 0).asdict(),
    ]  # fmt: skip


def run(quick: bool = False) -> dict[str, Any]:
    runs, count = (10, 2000) if quick else (30, 8000)
    scratch = Path(tempfile.mkdtemp(prefix="xvmd-mhb-", dir="/tmp"))
    lab = Lab(scratch)
    out: dict[str, Any] = {"quick": quick, "device": DEVICE}
    try:
        world = ChaosLab(lab, scratch)
        try:
            world.wait_for_group()
            say("three hosts in their group")
            nodes = [f"node{i}" for i in (1, 2, 3, 4)]
            hosts = world.hosts.values()
            pids = {
                "xvmd": [h.xvmd.proc.pid for h in hosts if h.xvmd and h.xvmd.proc],
                "corosync": [h.node.corosync.pid for h in hosts if h.node.corosync],
            }
            out["group"] = {
                "latency": latency(world, nodes, runs // 2),
                "load": load(world, nodes, count, pids),
            }
            g = out["group"]
            say(f"group: {g['latency']['median']} ms, {g['load']['throughput']:.0f} req/s")
            out["migration"] = [migrate(world, *move) for move in MOVES]
            say(f"migration: {[m['first_correct_s'] for m in out['migration']]} s")
            out["single"] = baseline(world, runs, count)
        finally:
            world.close()
    finally:
        lab.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_probe"]:
        prober(args[1], args[2], seconds=3.5, interval=0.01)
        return 0
    p = argparse.ArgumentParser(
        prog="python -m bench.multihost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true")
    ns = p.parse_args(args)
    print(json.dumps(run(ns.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
