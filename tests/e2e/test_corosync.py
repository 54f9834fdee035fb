"""CorosyncQuorum against the real corosync 3: one node, one node without a quorum provider,
and three nodes in network namespaces with one of them cut off and healed.

corosync's IPC is an abstract unix socket (per network namespace) plus buffers in /dev/shm, so
each node gets a network namespace and a private mount namespace (tmpfs on /run for the pid
lock, tmpfs on /dev/shm), held open by a ``sleep``; corosync and the probe
(tests/support/corosync_probe.py, printing each QuorumStatus as a JSON line) both enter it with
``nsenter``. Nothing is created in the host namespaces; every process is stopped by its PID and
every namespace deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO, Netns, run

pytestmark = pytest.mark.e2e

Status = dict[str, Any]


@pytest.fixture(autouse=True)
def _corosync_installed() -> None:
    if shutil.which("corosync") is None or shutil.which("nsenter") is None:
        message = "needs corosync (apt-get install corosync) and nsenter"
        if os.environ.get("XVMD_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)


def corosync_conf(
    scratch: Path, nodes: list[tuple[int, str]], *, provider: bool = True, name: str = "xt"
) -> str:
    """A corosync.conf (knet, no crypto, token 1000); nodes are (nodeid, ring0_addr)."""
    state = scratch / "state"
    state.mkdir(exist_ok=True)
    node_blocks = "".join(
        f" node {{\n  name: node{nodeid}\n  nodeid: {nodeid}\n  ring0_addr: {addr}\n }}\n"
        for nodeid, addr in nodes
    )
    quorum = "quorum {\n provider: corosync_votequorum\n}\n" if provider else ""
    return (
        "totem {\n version: 2\n cluster_name: " + name + "\n transport: knet\n"
        " crypto_cipher: none\n crypto_hash: none\n token: 1000\n}\n"
        + quorum
        + "nodelist {\n"
        + node_blocks
        + "}\n"
        + f"system {{\n state_dir: {state}\n}}\n"
        + "logging {\n to_stderr: yes\n to_syslog: no\n timestamp: on\n}\n"
    )


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGKILL) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Node:
    """One corosync node: a network namespace plus a private mount namespace (see module doc)."""

    def __init__(self, netns: Netns, scratch: Path) -> None:
        self.netns = netns
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self.corosync: subprocess.Popen[bytes] | None = None
        self.holder = subprocess.Popen(
            netns.cmd(
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /dev/shm && exec sleep infinity",
            )
        )
        deadline = time.monotonic() + 5
        while Path(f"/proc/{self.holder.pid}/comm").read_text().strip() != "sleep":
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("could not set up the private mount namespace")
            time.sleep(0.01)

    def cmd(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", f"--wd={REPO}", *args]

    def start_corosync(self, conf: str) -> None:
        path = self.scratch / "corosync.conf"
        path.write_text(conf)
        with open(self.scratch / "corosync.log", "ab") as log:
            self.corosync = subprocess.Popen(
                self.cmd("corosync", "-f", "-c", str(path)), stdout=log, stderr=subprocess.STDOUT
            )

    def kill_corosync(self) -> None:
        _stop(self.corosync)
        self.corosync = None

    def close(self) -> None:
        self.kill_corosync()
        _stop(self.holder)


class Probe:
    """tests/support/corosync_probe.py inside a node; collects its status lines."""

    def __init__(self, node: Node) -> None:
        self.statuses: list[Status] = []
        self._new: queue.Queue[None] = queue.Queue()
        self._stderr = open(node.scratch / "probe.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            node.cmd(sys.executable, "-m", "tests.support.corosync_probe", "--retry-max", "1.0"),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.statuses.append(json.loads(line))
            self._new.put(None)

    def mark(self) -> int:
        return len(self.statuses)

    def wait(self, predicate: Callable[[Status], bool], timeout: float, since: int = 0) -> Status:
        """The first status from index ``since`` on that matches, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for status in self.statuses[seen:]:
                if predicate(status):
                    return status
                seen += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(
                    f"no matching status after {timeout}s; got: {self.statuses[since:]}"
                )
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=min(remaining, 0.2))

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self._reader.join(2)
        self._stderr.close()


class Lab:
    """Everything one test starts, stopped and deleted in ``close`` (always called)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.namespaces: list[Netns] = []
        self.nodes: list[Node] = []
        self.probes: list[Probe] = []

    def netns(self, prefix: str) -> Netns:
        ns = Netns(prefix)
        self.namespaces.append(ns)
        return ns

    def node(self, name: str, netns: Netns | None = None) -> Node:
        node = Node(netns or self.netns("xvmd-cs"), self.scratch / name)
        self.nodes.append(node)
        return node

    def probe(self, node: Node) -> Probe:
        probe = Probe(node)
        self.probes.append(probe)
        return probe

    def close(self) -> None:
        for probe in self.probes:
            with contextlib.suppress(Exception):
                probe.stop()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
        for ns in self.namespaces:
            ns.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def quorumtool_ring_id(node: Node) -> list[int]:
    """``Ring ID:  1.1c`` from ``corosync-quorumtool -s`` (rc 0 quorate, 2 not) on that node."""
    out = run(node.cmd("corosync-quorumtool", "-s"), check=False).stdout
    line = next(x for x in out.splitlines() if x.startswith("Ring ID:"))
    rep, seq = line.split(":", 1)[1].strip().split(".")
    return [int(rep, 16), int(seq, 16)]


def quorate_with(ids: list[int]) -> Callable[[Status], bool]:
    return lambda s: s["quorate"] and [m["nodeid"] for m in s["members"]] == ids


def test_single_node_quorate_then_killed_then_restarted(lab: Lab, tmp_path: Path) -> None:
    node = lab.node("n1")
    conf = corosync_conf(tmp_path / "n1", [(1, "127.0.0.1")], name="solo")
    t0 = time.monotonic()
    node.start_corosync(conf)
    probe = lab.probe(node)

    # (a) quorate, one member with its name and address, the cluster name, QUORUM_SET
    up = probe.wait(quorate_with([1]), timeout=10)
    print(f"\nsingle node quorate {up['t'] - t0:.2f}s after corosync was started")
    assert up["connected"] and up["quorum_set"] and up["reason"] == "quorate"
    assert up["cluster_name"] == "solo"
    assert up["local_nodeid"] == 1
    assert up["members"] == [{"nodeid": 1, "name": "node1", "addresses": ["127.0.0.1"]}]
    assert (up["expected_votes"], up["total_votes"], up["quorum"]) == (1, 1, 1)
    assert up["ring_id"] == quorumtool_ring_id(node)

    # (b) SIGKILL: seen at once on the IPC socket
    mark = probe.mark()
    t_kill = time.monotonic()
    node.kill_corosync()
    down = probe.wait(lambda s: not s["connected"], timeout=5, since=mark)
    print(f"corosync death seen after {down['t'] - t_kill:.3f}s")
    assert down["t"] - t_kill < 2.0
    assert not down["quorate"]
    assert down["reason"] == "corosync is not running (lost connection); reconnecting"
    assert down["members"] == []

    # (c) restarted: quorate again, same probe process, one more connection
    mark = probe.mark()
    t_start = time.monotonic()
    node.start_corosync(conf)
    again = probe.wait(quorate_with([1]), timeout=10, since=mark)
    print(f"quorate again {again['t'] - t_start:.2f}s after the restart (retry max 1 s)")
    assert again["connects"] == up["connects"] + 1
    assert probe.proc.poll() is None
    # no flapping while corosync was down: one "lost" status, not one per retry
    between = probe.statuses[mark : probe.statuses.index(again)]
    assert all(s["reason"] == down["reason"] for s in between if not s["connected"])


def test_no_quorum_provider_is_not_quorate(lab: Lab, tmp_path: Path) -> None:
    node = lab.node("free")
    node.start_corosync(corosync_conf(tmp_path / "free", [(1, "127.0.0.1")], provider=False))
    probe = lab.probe(node)
    status = probe.wait(lambda s: s["connected"], timeout=10)
    assert not status["quorate"]
    assert not status["quorum_set"]
    assert "QUORUM_FREE" in status["reason"]
    # it stays that way (no notification ever makes it quorate)
    time.sleep(1.0)
    assert not any(s["quorate"] for s in probe.statuses)


def test_three_nodes_isolate_and_heal(lab: Lab, tmp_path: Path) -> None:
    bridge = lab.netns("xvmd-cbr")
    bridge.ip("link", "add", "br0", "type", "bridge")
    bridge.ip("link", "set", "br0", "up")
    addrs = [(n, f"10.77.0.{n}") for n in (1, 2, 3)]
    nodes = []
    for n, addr in addrs:
        ns = lab.netns(f"xvmd-c{n}")
        # created inside the bridge namespace, the peer moved straight into the node's
        bridge.ip("link", "add", f"vc{n}", "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        bridge.ip("link", "set", f"vc{n}", "master", "br0")
        bridge.ip("link", "set", f"vc{n}", "up")
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        nodes.append(lab.node(f"n{n}", ns))
    t0 = time.monotonic()
    for n, node in enumerate(nodes, 1):
        node.start_corosync(corosync_conf(tmp_path / f"n{n}", addrs))
    probe1 = lab.probe(nodes[0])
    probe3 = lab.probe(nodes[2])

    all3 = quorate_with([1, 2, 3])
    up3 = probe3.wait(all3, timeout=15)
    up1 = probe1.wait(all3, timeout=15)
    print(f"\nthree nodes quorate {max(up1['t'], up3['t']) - t0:.2f}s after start")
    assert up3["local_nodeid"] == 3 and up1["local_nodeid"] == 1
    assert [m["name"] for m in up3["members"]] == ["node1", "node2", "node3"]
    assert [m["addresses"] for m in up3["members"]] == [[a] for _, a in addrs]
    assert (up3["expected_votes"], up3["total_votes"], up3["quorum"]) == (3, 3, 2)

    # isolate node 3: it loses quorum; nodes 1 and 2 keep it
    mark1, mark3 = probe1.mark(), probe3.mark()
    t_cut = time.monotonic()
    bridge.ip("link", "set", "vc3", "down")
    lost = probe3.wait(lambda s: not s["quorate"], timeout=10, since=mark3)
    print(f"isolated node 3 not quorate after {lost['t'] - t_cut:.2f}s")
    assert lost["t"] - t_cut < 10
    assert lost["connected"] and lost["quorum_set"]
    assert [m["nodeid"] for m in lost["members"]] == [3]
    assert lost["ring_id"] == quorumtool_ring_id(nodes[2])
    assert "not quorate" in lost["reason"] and "fencing refused" in lost["reason"]
    pair = probe1.wait(quorate_with([1, 2]), timeout=10, since=mark1)
    print(f"nodes 1+2 saw node 3 leave after {pair['t'] - t_cut:.2f}s")
    assert all(s["quorate"] for s in probe1.statuses[mark1:])

    # heal: all three quorate again
    mark1, mark3 = probe1.mark(), probe3.mark()
    t_heal = time.monotonic()
    bridge.ip("link", "set", "vc3", "up")
    healed3 = probe3.wait(all3, timeout=15, since=mark3)
    healed1 = probe1.wait(all3, timeout=15, since=mark1)
    print(f"healed after {max(healed1['t'], healed3['t']) - t_heal:.2f}s")
    assert all(s["quorate"] for s in probe1.statuses[mark1:])
    assert healed3["ring_id"][1] > up3["ring_id"][1]
    time.sleep(0.5)  # settled: the last status matches what corosync-quorumtool shows
    assert probe3.statuses[-1]["ring_id"] == quorumtool_ring_id(nodes[2])
    assert probe1.statuses[-1]["ring_id"] == quorumtool_ring_id(nodes[0])
    # the probes never lost their corosync connection
    assert probe1.proc.poll() is None and probe3.proc.poll() is None
    after_up = probe1.statuses[probe1.statuses.index(up1) :]
    after_up += probe3.statuses[probe3.statuses.index(up3) :]
    assert all(s["connected"] for s in after_up)


def test_isolation_helpers_stay_private() -> None:
    """The namespaces above never leak: no 10.77.0.x address in the host namespace."""
    assert "10.77.0." not in run(["ip", "-o", "addr"]).stdout
