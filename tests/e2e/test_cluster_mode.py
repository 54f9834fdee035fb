"""Cluster mode with real corosync and the stock fence_xvm: power actions only while this host's
partition is quorate, only for cluster members, and recovery from a corosync restart without
restarting xvmd.

Each host is a corosync lab node (tests/support/corosync_lab.py): its own network namespace and
private /run and /dev/shm, so xvmd reaches that node's corosync over IPC. The guest client runs in
the same network namespace and reaches its host's xvmd over multicast on lo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import pyclient
from tests.support.corosync_lab import Lab, Node, corosync_conf
from tests.support.harness import (
    DOMAINS_XML,
    FIXTURES,
    ClientResult,
    Xvmd,
    fence_xvm,
    run_xvmd_once,
)
from tests.support.inside import enter_netns
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType, Op

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("corosync_installed")]

PORT = 22229


def guest_cluster(root: Path, hosts: int, requester: str = "127.0.0.1") -> Path:
    """cluster.conf for a guest cluster with one node per host (nodeN is vm-0N on hostN)."""
    root.mkdir(parents=True, exist_ok=True)
    nodes, devices = [], []
    for n in range(1, hosts + 1):
        key = root / f"host{n}.key"
        shutil.copy(FIXTURES / "keys" / f"host{n}.key", key)
        key.chmod(0o600)
        alt = f'<altname name="{requester}"/>' if n == 1 else ""
        nodes.append(
            f'<clusternode name="node{n}" nodeid="{n}">{alt}<fence><method name="1">'
            f'<device name="xvm-host{n}" port="vm-0{n}"/></method></fence></clusternode>'
        )
        devices.append(f'<fencedevice name="xvm-host{n}" agent="fence_xvm" key_file="{key}"/>')
    conf = root / "cluster.conf"
    conf.write_text(
        '<cluster name="guests" config_version="1"><clusternodes>'
        + "".join(nodes)
        + "</clusternodes><fencedevices>"
        + "".join(devices)
        + "</fencedevices></cluster>\n"
    )
    return conf


def start_xvmd(node: Node, conf: Path, device: str, *extra: str) -> Xvmd:
    args = [
        "-f",
        str(conf),
        "-D",
        device,
        "-I",
        "lo",
        "-p",
        str(PORT),
        "--control",
        str(node.scratch / "xvmd.sock"),
        "--audit",
        str(node.scratch / "audit.jsonl"),
        "-U",
        f"test://{DOMAINS_XML}",
        *extra,
    ]
    return Xvmd(node, args, node.scratch / "xvmd.log", port=PORT).start()


def xvm(node: Node, key: Path, *args: str) -> ClientResult:
    return fence_xvm(node, "-p", str(PORT), "-k", str(key), *args)


def eventually(check: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - t0


def status(node: Node) -> ClientResult:
    return run_xvmd_once(node, ["status", "--control", str(node.scratch / "xvmd.sock")])


def test_single_host_follows_corosync_down_and_up(lab: Lab, tmp_path: Path) -> None:
    node = lab.node("h1")
    cc = corosync_conf(tmp_path / "h1", [(1, "127.0.0.1")], name="hosts")
    node.start_corosync(cc)
    conf = guest_cluster(tmp_path / "guests", 1)
    key = conf.parent / "host1.key"
    d = start_xvmd(node, conf, "xvm-host1")
    eventually(lambda: status(node).rc == 0, timeout=10)
    assert "cluster mode" in d.log()

    # quorate: served
    assert xvm(node, key, "-t", "5", "-o", "off", "-H", "node1").rc == 0
    assert xvm(node, key, "-t", "5", "-o", "status", "-H", "node1").rc == 2

    # corosync killed: an inquorate host takes no part at all (its view of where VMs run may
    # be a partition's): power actions, monitor and status all go unanswered
    node.kill_corosync()
    for op in ("on", "monitor", "status"):
        res = xvm(node, key, "-t", "3", "-r", "10", "-o", op, "-H", "node1")
        assert res.rc == 1 and "Timed out waiting for response" in res.output, res.output
    st = status(node)
    assert st.rc == 1, st.output
    assert "NOT QUORATE -- corosync is not running" in st.stdout
    assert re.search(r"on node1 -> dropped: this host is not quorate", st.stdout), st.stdout
    assert "dropped without answer" in d.log()

    # corosync back: served again by the same xvmd process
    node.start_corosync(cc)
    took = eventually(lambda: status(node).rc == 0, timeout=15)
    print(f"\nxvmd quorate again {took:.2f}s after corosync restarted")
    res = xvm(node, key, "-t", "5", "-o", "on", "-H", "node1")
    assert res.rc == 0, res.output + d.log()
    assert xvm(node, key, "-t", "5", "-o", "monitor").rc == 0
    assert d.proc is not None and d.proc.poll() is None


def test_no_quorum_provider_refuses_power_actions(lab: Lab, tmp_path: Path) -> None:
    node = lab.node("free")
    node.start_corosync(corosync_conf(tmp_path / "free", [(1, "127.0.0.1")], provider=False))
    conf = guest_cluster(tmp_path / "guests", 1)
    d = start_xvmd(node, conf, "xvm-host1")
    assert d.wait_for_log("QUORUM_FREE", timeout=10)
    res = xvm(node, conf.parent / "host1.key", "-t", "2", "-r", "10", "-o", "off", "-H", "node1")
    assert res.rc == 1
    assert "QUORUM_FREE" in status(node).stdout


def test_requester_that_is_no_cluster_node_gets_no_callback(lab: Lab, tmp_path: Path) -> None:
    node = lab.node("h1")
    node.start_corosync(corosync_conf(tmp_path / "h1", [(1, "127.0.0.1")], name="hosts"))
    conf = guest_cluster(tmp_path / "guests", 1, requester="127.0.0.9")
    d = start_xvmd(node, conf, "xvm-host1")
    eventually(lambda: status(node).rc == 0, timeout=10)
    res = xvm(node, conf.parent / "host1.key", "-t", "5", "-o", "off", "-H", "node1")
    assert res.rc == 1 and "Timed out waiting for response" in res.output, res.output
    assert d.wait_for_log("requester 127.0.0.1 is no node of cluster 'guests'", timeout=10)
    assert "not-a-node" in status(node).stdout


def test_isolated_host_stops_fencing_while_the_others_serve(lab: Lab, tmp_path: Path) -> None:
    bridge = lab.netns("xvmd-cbr")
    bridge.ip("link", "add", "br0", "type", "bridge")
    bridge.ip("link", "set", "br0", "up")
    addrs = [(n, f"10.77.0.{n}") for n in (1, 2, 3)]
    conf = guest_cluster(tmp_path / "guests", 3)
    hosts: list[Node] = []
    for n, addr in addrs:
        ns = lab.netns(f"xvmd-h{n}")
        bridge.ip("link", "add", f"vc{n}", "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        bridge.ip("link", "set", f"vc{n}", "master", "br0")
        bridge.ip("link", "set", f"vc{n}", "up")
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        host = lab.node(f"h{n}", ns)
        host.start_corosync(corosync_conf(tmp_path / f"h{n}", addrs, name="hosts"))
        hosts.append(host)
    daemons = [start_xvmd(h, conf, f"xvm-host{n}") for n, h in enumerate(hosts, 1)]
    for h in hosts:
        eventually(lambda h=h: status(h).rc == 0, timeout=20)
    key = [conf.parent / f"host{n}.key" for n in (1, 2, 3)]

    def serves(n: int, op: str = "off") -> bool:
        res = xvm(hosts[n - 1], key[n - 1], "-t", "2", "-r", "10", "-o", op, "-H", f"node{n}")
        return res.rc == 0

    assert all(serves(n) for n in (1, 2, 3))
    assert all(serves(n, "on") for n in (1, 2, 3))

    # cut host 3 off: within the token timeout it stops honouring power actions
    t_cut = time.monotonic()
    bridge.ip("link", "set", "vc3", "down")
    eventually(lambda: status(hosts[2]).rc == 1, timeout=10)
    lost = time.monotonic() - t_cut
    print(f"\nisolated host stopped fencing {lost:.2f}s after the cut (token 1000 ms)")
    assert lost < 10
    assert not serves(3)
    assert "not quorate" in status(hosts[2]).stdout
    assert serves(1) and serves(2)  # the quorate pair keeps serving
    assert "dropped without answer" in daemons[2].log()

    # heal: all three serve again, no xvmd restarted
    bridge.ip("link", "set", "vc3", "up")
    eventually(lambda: status(hosts[2]).rc == 0, timeout=20)
    assert all(serves(n, "on") for n in (1, 2, 3))
    assert all(d.proc is not None and d.proc.poll() is None for d in daemons)


def _off_paused_mid_handshake(node: Node, key: Path, paused: int, go: int) -> int:
    """Forked into the node's namespace: an `off` of node1 whose client stops after the daemon's
    challenge (writes to ``paused``), answers it once ``go`` is readable, and returns the result
    byte (255: none came)."""
    pid = os.fork()
    if pid != 0:
        return pid
    code = 255
    try:
        enter_netns(node.netns)
        k = Key(key.read_bytes())
        listener = pyclient.callback_listener()
        packet = pyclient.build(Op.OFF, "node1", k, port=listener.getsockname()[1])
        pyclient.send_datagram(packet, ("225.0.0.12", PORT))
        listener.settimeout(10)
        conn, _ = listener.accept()
        conn.settimeout(30)
        c1 = os.urandom(CHALLENGE_SIZE)
        conn.sendall(c1)
        assert conn.recv(CHALLENGE_SIZE, socket.MSG_WAITALL) == k.digest(HashType.SHA256, c1)
        c2 = conn.recv(CHALLENGE_SIZE, socket.MSG_WAITALL)
        os.write(paused, b"p")
        os.read(go, 1)
        conn.sendall(k.digest(HashType.SHA256, c2))
        result = conn.recv(1)
        code = result[0] if result else 255
    finally:
        os._exit(code)


def test_sigterm_mid_handshake_still_carries_out_the_off_under_quorum(
    lab: Lab, tmp_path: Path
) -> None:
    node = lab.node("h1")
    node.start_corosync(corosync_conf(tmp_path / "h1", [(1, "127.0.0.1")], name="hosts"))
    conf = guest_cluster(tmp_path / "guests", 1)
    d = start_xvmd(node, conf, "xvm-host1")
    eventually(lambda: status(node).rc == 0, timeout=10)
    paused_r, paused_w = os.pipe()
    go_r, go_w = os.pipe()
    child = _off_paused_mid_handshake(node, conf.parent / "host1.key", paused_w, go_r)
    assert os.read(paused_r, 1) == b"p"  # authenticated one way, the client's answer pending
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait_for_log("stopping: no new requests")
    time.sleep(0.5)  # a daemon that lets go of quorum at once has done so by now
    os.write(go_w, b"g")
    _, wait_status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, d.log()  # answered: success
    assert d.proc.wait(timeout=20) == 0
    records = [json.loads(x) for x in (node.scratch / "audit.jsonl").read_text().splitlines()]
    assert [(r["op"], r["result"], r["quorum"]) for r in records] == [
        ("off", "success", "quorate")
    ], records
