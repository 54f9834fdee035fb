"""CpgGroup against the real corosync 3: one node, then three nodes in network namespaces with
the corosync of one of them killed and restarted.

Each node is a network namespace plus a private mount namespace (tests/support/corosync_lab.py);
the probe (tests/support/cpg_probe.py) enters it with ``nsenter``, joins the group, prints each
view and delivered message as a JSON line and sends the lines written to its stdin. Nothing is
created in the host namespaces; every process is stopped by its PID, every namespace deleted.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.corosync_lab import Lab, LineProcess, Node, corosync_conf
from xvmd.hosts.group import MAX_PAYLOAD

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("corosync_installed")]

Line = dict[str, Any]
GROUP = "xvmd-e2e"


class CpgProbe(LineProcess):
    """tests/support/cpg_probe.py inside a node: its stdin to send, its lines collected."""

    def __init__(self, node: Node, group: str = GROUP) -> None:
        args = ("--group", group, "--retry-max", "1.0")
        super().__init__(node, "tests.support.cpg_probe", *args, stdin=True)

    def send(self, *texts: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{t}\n" for t in texts))
        self.proc.stdin.flush()

    def messages(self, since: int = 0) -> list[tuple[int, str]]:
        return [(m["nodeid"], m["text"]) for m in self.lines[since:] if m["event"] == "message"]

    def wait_messages(self, count: int, timeout: float, since: int = 0) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        while len(self.messages(since)) < count and time.monotonic() < deadline:
            self.next_line(deadline - time.monotonic())
        got = self.messages(since)
        assert len(got) >= count, f"{len(got)} of {count} messages after {timeout}s"
        return got

    def views(self, since: int = 0) -> list[Line]:
        return [v for v in self.lines[since:] if v["event"] == "view"]


@pytest.fixture
def probes(lab: Lab) -> Iterator[Callable[[Node], CpgProbe]]:
    """Starts probes; stops them (before the lab stops the nodes)."""
    started: list[CpgProbe] = []

    def start(node: Node) -> CpgProbe:
        probe = CpgProbe(node)
        started.append(probe)
        return probe

    yield start
    for probe in started:
        with contextlib.suppress(Exception):
            probe.stop()


def view_with(ids: list[int]) -> Callable[[Line], bool]:
    return lambda line: line["event"] == "view" and line["connected"] and line["members"] == ids


def three_nodes(lab: Lab, tmp_path: Path) -> tuple[list[Node], list[str]]:
    """Three nodes on one bridge (in its own namespace), corosync running on each."""
    bridge = lab.netns("xvmd-gbr")
    bridge.ip("link", "add", "br0", "type", "bridge")
    bridge.ip("link", "set", "br0", "up")
    addrs = [(n, f"10.78.0.{n}") for n in (1, 2, 3)]
    nodes, confs = [], []
    for n, addr in addrs:
        ns = lab.netns(f"xvmd-g{n}")
        bridge.ip("link", "add", f"vg{n}", "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        bridge.ip("link", "set", f"vg{n}", "master", "br0")
        bridge.ip("link", "set", f"vg{n}", "up")
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        nodes.append(lab.node(f"n{n}", ns))
        confs.append(corosync_conf(tmp_path / f"n{n}", addrs))
    for node, conf in zip(nodes, confs, strict=True):
        node.start_corosync(conf)
    return nodes, confs


def test_single_node_joins_and_gets_its_own_messages(
    lab: Lab, probes: Callable[[Node], CpgProbe], tmp_path: Path
) -> None:
    node = lab.node("n1")
    t0 = time.monotonic()
    node.start_corosync(corosync_conf(tmp_path / "n1", [(1, "127.0.0.1")], name="solo"))
    probe = probes(node)

    joined = probe.wait(view_with([1]), timeout=15)
    print(f"\njoined {joined['t'] - t0:.2f}s after corosync was started")
    assert joined["local_nodeid"] == 1
    assert joined["processes"] == [[1, joined["pid"]]]  # corosync reports our own pid
    # the first connected view is the one with ourselves (before it at most the disconnected
    # view of a start() that came before corosync was ready)
    views = probe.views()
    assert not any(v["connected"] for v in views[: views.index(joined)])

    mark = probe.mark()
    probe.send("hello", "", "ünïcode")
    got = probe.wait_messages(3, timeout=10, since=mark)
    assert got == [(1, "hello"), (1, ""), (1, "ünïcode")]

    # the largest payload arrives whole
    mark = probe.mark()
    probe.send(f"@big {MAX_PAYLOAD}", "after")
    big = probe.wait(lambda m: m["event"] == "message", timeout=15, since=mark)
    assert big["size"] == MAX_PAYLOAD and big["nodeid"] == 1
    assert probe.wait_messages(2, timeout=10, since=mark)[1] == (1, "after")
    assert probe.lines[-1]["dropped_sends"] == 0


def test_three_nodes_deliver_in_one_order(
    lab: Lab, probes: Callable[[Node], CpgProbe], tmp_path: Path
) -> None:
    nodes, _ = three_nodes(lab, tmp_path)
    t0 = time.monotonic()
    group = [probes(node) for node in nodes]
    for probe in group:
        probe.wait(view_with([1, 2, 3]), timeout=20)
    print(f"\nthree probes in one view {time.monotonic() - t0:.2f}s after start")
    assert [p.lines[-1]["local_nodeid"] for p in group] == [1, 2, 3]

    marks = [p.mark() for p in group]
    count = 50
    for n, probe in enumerate(group, 1):  # all three at once, each with its own sequence
        probe.send(*(f"n{n}-{i}" for i in range(count)))
    t_send = time.monotonic()
    seen = [
        p.wait_messages(3 * count, timeout=20, since=m) for p, m in zip(group, marks, strict=True)
    ]
    print(f"{3 * count} messages delivered everywhere after {time.monotonic() - t_send:.2f}s")
    assert seen[0] == seen[1] == seen[2]  # one total order
    assert len(seen[0]) == 3 * count
    for n in (1, 2, 3):
        assert [t for i, t in seen[0] if i == n] == [f"n{n}-{i}" for i in range(count)]
    assert len({t for _, t in seen[0]}) == 3 * count
    switches = sum(a[0] != b[0] for a, b in itertools.pairwise(seen[0]))
    print(f"the agreed order switches sender {switches} times")


def test_killed_corosync_leaves_and_rejoins(
    lab: Lab, probes: Callable[[Node], CpgProbe], tmp_path: Path
) -> None:
    nodes, confs = three_nodes(lab, tmp_path)
    group = [probes(node) for node in nodes]
    for probe in group:
        probe.wait(view_with([1, 2, 3]), timeout=20)
    p1, p2, p3 = group

    # SIGKILL corosync on node 3: its probe sees the hang-up at once; nodes 1 and 2 after the
    # token timeout
    marks = [p.mark() for p in group]
    t_kill = time.monotonic()
    nodes[2].kill_corosync()
    down = p3.wait(lambda v: v["event"] == "view" and not v["connected"], 5, marks[2])
    print(f"\nnode 3 saw its corosync die after {down['t'] - t_kill:.3f}s")
    assert down["members"] == [] and down["t"] - t_kill < 2.0
    for probe, mark in ((p1, marks[0]), (p2, marks[1])):
        pair = probe.wait(view_with([1, 2]), timeout=15, since=mark)
        print(f"node {pair['local_nodeid']} saw node 3 leave after {pair['t'] - t_kill:.2f}s")
    # nodes 1 and 2 keep talking meanwhile; node 3's probe drops what it is given
    mark1 = p1.mark()
    p1.send("while-3-is-down")
    assert p2.wait_messages(1, 10, marks[1])[-1] == (1, "while-3-is-down")
    p3.send("into-the-void")
    p3.wait(lambda line: line["event"] == "dropped", 5, marks[2])

    # restart it: the same probe reconnects and rejoins; the three views agree again
    marks = [p.mark() for p in group]
    t_start = time.monotonic()
    nodes[2].start_corosync(confs[2])
    back = p3.wait(view_with([1, 2, 3]), timeout=30, since=marks[2])
    print(f"node 3 rejoined {back['t'] - t_start:.2f}s after the restart (retry max 1 s)")
    assert back["reconnects"] == 1 and p3.proc.poll() is None
    for probe, mark in ((p1, marks[0]), (p2, marks[1])):
        probe.wait(view_with([1, 2, 3]), timeout=20, since=mark)
    # one disconnected view on node 3, not one per failed reconnect
    after_kill = p3.views(p3.lines.index(down))
    assert sum(not v["connected"] for v in after_kill) == 1
    # and messages flow between all three again, in one order
    marks = [p.mark() for p in group]
    p3.send("n3-back")
    p1.send("n1-back")
    seen = [p.wait_messages(2, 10, m) for p, m in zip(group, marks, strict=True)]
    assert seen[0] == seen[1] == seen[2]
    assert sorted(seen[0]) == [(1, "n1-back"), (3, "n3-back")]
    assert (1, "while-3-is-down") not in p3.messages() and mark1 > 0
