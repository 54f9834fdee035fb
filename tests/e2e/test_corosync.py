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

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.corosync_lab import Lab, Node, Status, corosync_conf
from tests.support.harness import run

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("corosync_installed")]


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
