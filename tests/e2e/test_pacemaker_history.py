"""Pacemaker's fencing history as proof that a host is down, against real Pacemaker.

Three hosts on one bridge run corosync (knet, token 1000 ms) and Pacemaker
(tests/support/pacemaker_lab.py: private state, stonith-enabled=false, no fence device).
node3 dies (SIGKILL of its corosync and Pacemaker); once node1 sees it gone, a human confirms
it with ``stonith_admin --confirm node3`` on node1. xvmd's edge (``fencing_history``), run
inside node2 by tests/support/pacemaker_probe.py exactly as the daemon would run it, must then
return events for which ``proof_of_down(events, "node3", since)`` is that confirmation, with
``since`` taken just before the kill; before the confirmation there is no proof, and a
confirmation from an earlier death of node3 never counts for a later one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.corosync_lab import Lab, corosync_conf
from tests.support.harness import Netns
from tests.support.pacemaker_lab import (
    DAEMONS,
    Pacemaker,
    PacemakerLab,
    eventually,
    host_state,
    run,
)
from tests.support.pacemaker_probe import event_from_json
from xvmd.hosts.fencehistory import EventState, FencingEvent, proof_of_down

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("corosync_installed", "pacemaker_installed"),
]

NODES = {"node1", "node2", "node3"}


@dataclass
class Cluster:
    pcmk: PacemakerLab
    confs: dict[str, str]

    def __getitem__(self, name: str) -> Pacemaker:
        return self.pcmk.members[name]

    def probe(self, at: str, *args: str) -> dict[str, object]:
        cmd = self[at].cmd(sys.executable, "-m", "tests.support.pacemaker_probe", *args)
        res = run(cmd, timeout=30)
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert isinstance(doc, dict)
        return doc

    def history(self, at: str, target: str) -> list[FencingEvent]:
        doc = self.probe(at, "history", target)
        assert "events" in doc, doc
        events = doc["events"]
        assert isinstance(events, list)
        return [event_from_json(e) for e in events]

    def proof(self, target: str, since: float, at: str = "node2") -> FencingEvent | None:
        return proof_of_down(self.history(at, target), target, since)

    def wait_proof(self, target: str, since: float, timeout: float = 10) -> FencingEvent:
        found: list[FencingEvent] = []

        def proven() -> bool:
            p = self.proof(target, since)
            found[:] = [p] if p is not None else []
            return p is not None

        eventually(proven, timeout, f"proof that {target} is down since {since}")
        return found[0]

    def kill(self, name: str) -> float:
        """Crash ``name``'s Pacemaker and corosync; ``since``, taken just before."""
        since = time.time()
        self[name].kill()
        self[name].node.kill_corosync()
        return since

    def wait_gone(self, name: str, at: str = "node1") -> float:
        t0 = time.monotonic()
        eventually(lambda: name not in self[at].online(), 20, f"{at} sees {name} gone")
        return time.monotonic() - t0

    def restart(self, name: str) -> None:
        self[name].node.start_corosync(self.confs[name])
        self[name].start()
        for at in ("node1", name):
            self.pcmk.wait_online(NODES, at=at)

    def confirm(self, at: str, target: str) -> None:
        res = run(self[at].cmd("stonith_admin", f"--confirm={target}"))
        assert res.returncode == 0, res.stdout + res.stderr


def plug(bridge: Netns, ns: Netns, port: str, addr: str) -> None:
    bridge.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    bridge.ip("link", "set", port, "master", "br0")
    bridge.ip("link", "set", port, "up")
    ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
    ns.ip("link", "set", "eth0", "up")


def start(lab: Lab, pcmk: PacemakerLab, tmp: Path) -> Cluster:
    """Three corosync nodes on one bridge, then Pacemaker on each, all online everywhere."""
    bridge = lab.netns("xvmd-pbr")
    bridge.ip("link", "add", "br0", "type", "bridge")
    bridge.ip("link", "set", "br0", "up")
    addrs = [(n, f"10.77.0.{n}") for n in (1, 2, 3)]
    confs = {}
    for n, addr in addrs:
        ns = lab.netns(f"xvmd-pm{n}")
        plug(bridge, ns, f"vp{n}", addr)
        node = lab.node(f"pm{n}", ns)
        confs[f"node{n}"] = corosync_conf(tmp / f"pm{n}", addrs, name="hosts")
        node.start_corosync(confs[f"node{n}"])
        pcmk.add(f"node{n}", node)
    t0 = time.monotonic()
    for member in pcmk.members.values():
        member.start()
    for name in sorted(NODES):
        pcmk.wait_online(NODES, at=name)
    print(f"\nPacemaker online on three nodes in {time.monotonic() - t0:.1f}s")
    assert pcmk.members["node1"].cluster_property("stonith-enabled") == "false"
    assert all(len(m.pids()) == len(DAEMONS) for m in pcmk.members.values())
    return Cluster(pcmk, confs)


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path) -> Iterator[Cluster]:
    before = host_state()
    pcmk = PacemakerLab()
    try:
        yield start(lab, pcmk, tmp_path)
    finally:
        t0 = time.monotonic()
        pcmk.close()
        print(f"Pacemaker stopped in {time.monotonic() - t0:.1f}s")
    assert all(not m.pids() for m in pcmk.members.values())
    assert host_state() == before, "Pacemaker wrote outside the lab"


def test_a_confirmation_after_the_host_left_proves_it_down(cluster: Cluster) -> None:
    assert cluster.probe("node2", "available") == {"available": True}
    assert cluster.history("node2", "node3") == []

    since = cluster.kill("node3")
    gone = cluster.wait_gone("node3")
    print(f"node1 saw node3 gone {gone:.1f}s after the kill")
    assert cluster.proof("node3", since) is None  # down, but nobody proved it yet
    # where no fencer runs, the edge says so instead of answering "no history"
    assert cluster.probe("node3", "available") == {"available": False}
    error = cluster.probe("node3", "history", "node3")["error"]
    assert isinstance(error, str) and "Could not connect to fencer" in error

    cluster.confirm("node1", "node3")
    t0 = time.monotonic()
    proof = cluster.wait_proof("node3", since)
    print(f"node2's history held the confirmation {time.monotonic() - t0:.2f}s after it")
    assert proof.target == "node3" and proof.action == "off"
    assert proof.state is EventState.SUCCESS and proof.manual
    assert proof.delegate == "a human" and proof.origin == "node1"
    assert proof.client.startswith("stonith_admin.")
    assert proof.completed is not None and since <= proof.completed <= time.time()
    assert cluster.proof("node3", since, at="node1") == proof  # every fencer holds it


def test_a_confirmation_of_an_earlier_death_does_not_count(cluster: Cluster) -> None:
    first_since = cluster.kill("node3")
    cluster.wait_gone("node3")
    cluster.confirm("node1", "node3")
    first = cluster.wait_proof("node3", first_since)

    cluster.restart("node3")  # it rejoins: the confirmation was of its previous life
    since = cluster.kill("node3")
    cluster.wait_gone("node3")
    events = cluster.history("node2", "node3")
    assert first in events
    assert proof_of_down(events, "node3", first_since) == first
    assert proof_of_down(events, "node3", since) is None

    cluster.confirm("node1", "node3")
    second = cluster.wait_proof("node3", since)
    assert second != first and second.manual
    assert second.completed is not None and second.completed >= since
