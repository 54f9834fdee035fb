"""Three hosts and a guest on one bridge: real corosync on the hosts (knet over the bridge), one
xvmd per host with its own libvirt (the test driver, a different set of domains on each), and
the stock fence_xvm in the guest namespace. Every request reaches every host.

What it proves, each many times: exactly one host connects back and its answer is true, with
one shared key and with a key per host; off really leaves the VM off; list is the union of all
hosts; a stale shut-off copy never answers for the running one; a VM known nowhere is never
reported fenced; a forward whose target host dies mid-operation fails within the budget.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.corosync_lab import Lab, Node, corosync_conf
from tests.support.harness import (
    ClientResult,
    Netns,
    Xvmd,
    fence_xvm,
    parse_list,
    run_xvmd_once,
)
from tests.support.multihost_lab import GROUP, GUEST, PORT, cluster_conf, make_bridge, plug

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("corosync_installed")]

RUN, OFF = 1, 5


UUIDS = {name: f"00000{i:03x}-0000-4000-8000-5eed0000000{i}" for i, name in enumerate("abcdx", 1)}


def domains_xml(path: Path, vms: dict[str, int]) -> Path:
    rows = "".join(
        f"<domain type='test'><name>vm-{v}</name><uuid>{UUIDS[v]}</uuid><memory>65536</memory>"
        f"<os><type>hvm</type></os><test:runstate>{state}</test:runstate></domain>"
        for v, state in vms.items()
    )
    path.write_text(f"<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>{rows}</node>")
    return path


@dataclass
class Site:
    hosts: list[Node]
    daemons: list[Xvmd]
    guest: Netns
    conf: Path
    bridge: Netns

    def xvm(self, device: str, *args: str) -> ClientResult:
        key = self.conf.parent / f"{device}.key"
        return fence_xvm(self.guest, "-a", GROUP, "-p", str(PORT), "-k", str(key), *args)

    def status(self, n: int) -> dict[str, object]:
        sock = self.hosts[n - 1].scratch / "xvmd.sock"
        res = run_xvmd_once(self.hosts[n - 1], ["status", "--json", "--control", str(sock)])
        return json.loads(res.stdout) if res.stdout.strip() else {}


def build(
    lab: Lab, tmp: Path, layouts: list[dict[str, int]], served: list[str], conf: Path
) -> Site:
    bridge = make_bridge(lab, "xvmd-mbr")
    addrs = [(n, f"10.77.0.{n}") for n in (1, 2, 3)]
    hosts = []
    for n, addr in addrs:
        ns = lab.netns(f"xvmd-mh{n}")
        plug(bridge, ns, f"vh{n}", addr)
        host = lab.node(f"mh{n}", ns)
        host.start_corosync(corosync_conf(tmp / f"mh{n}", addrs, name="hosts"))
        hosts.append(host)
    guest = lab.netns("xvmd-mg")
    plug(bridge, guest, "vg", GUEST)
    daemons = []
    for n, (host, vms, device) in enumerate(zip(hosts, layouts, served, strict=True), start=1):
        xml = domains_xml(tmp / f"domains{n}.xml", vms)
        args = ["-f", str(conf), "-D", device, "-I", "eth0", "-p", str(PORT), "-U", f"test://{xml}"]
        args += [
            "--control",
            str(host.scratch / "xvmd.sock"),
            "--audit",
            str(host.scratch / "a.jsonl"),
        ]
        daemons.append(Xvmd(host, args, host.scratch / "xvmd.log", port=PORT).start())
    site = Site(hosts, daemons, guest, conf, bridge)
    eventually(lambda: all(_grouped(site, n) for n in (1, 2, 3)), timeout=30, what=site)
    return site


def _grouped(site: Site, n: int) -> bool:
    doc = site.status(n)
    hosts = doc.get("hosts") if isinstance(doc, dict) else None
    quorum = doc.get("quorum") if isinstance(doc, dict) else None
    if not isinstance(hosts, dict) or not isinstance(quorum, dict) or not quorum.get("quorate"):
        return False
    members = hosts.get("members")
    return isinstance(members, list) and len(members) == 3


def eventually(check: Callable[[], bool], timeout: float, what: Site | None = None) -> None:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            logs = "\n".join(d.log()[-3000:] for d in what.daemons) if what else ""
            pytest.fail(f"not within {timeout}s\n{logs}")
        time.sleep(0.2)


def answered_by(site: Site) -> list[int]:
    """How many requests each host has answered so far (from its own status document)."""
    counts = []
    for n in (1, 2, 3):
        answered = site.status(n).get("counters", {})
        assert isinstance(answered, dict)
        counts.append(sum(answered.get("answered", {}).values()))
    return counts


# -- one key on every host --------------------------------------------------------------------


SHARED = {"xvm": "host1.key"}
SHARED_NODES = {"node1": ("xvm", "vm-a"), "node2": ("xvm", "vm-b"), "node3": ("xvm", "vm-c")}


def test_shared_key_one_true_answer_from_the_owner(lab: Lab, tmp_path: Path) -> None:
    conf = cluster_conf(tmp_path / "guests", SHARED, SHARED_NODES)
    layouts = [{"a": RUN, "c": OFF}, {"b": RUN}, {"c": RUN}]  # host 1 keeps a stale copy of c
    site = build(lab, tmp_path, layouts, ["xvm"] * 3, conf)

    for _ in range(8):
        for node in ("node1", "node2", "node3"):
            res = site.xvm("xvm", "-t", "10", "-o", "status", "-H", node)
            assert res.rc == 0, (node, res.output)  # running, every time, wherever it runs
    before = answered_by(site)
    assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node3").rc == 0
    after = answered_by(site)
    assert [b - a for a, b in zip(before, after, strict=True)] == [0, 0, 1]  # only its owner

    listed = parse_list(site.xvm("xvm", "-t", "10", "-o", "list").stdout)
    assert {name: state for name, (_, state) in listed.items()} == {
        "vm-a": "on",
        "vm-b": "on",
        "vm-c": "on",
    }

    res = site.xvm("xvm", "-t", "10", "-o", "off", "-H", "node2")
    assert res.rc == 0, res.output
    assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node2").rc == 2  # really off
    res = site.xvm("xvm", "-t", "10", "-o", "off", "-H", "node3")  # not the stale copy on 1
    assert res.rc == 0, res.output
    assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node3").rc == 2
    assert parse_list(site.xvm("xvm", "-t", "10", "-o", "list").stdout)["vm-c"][1] == "off"


def test_a_vm_known_nowhere_is_never_reported_fenced(lab: Lab, tmp_path: Path) -> None:
    nodes = {**SHARED_NODES, "node4": ("xvm", "vm-x")}  # vm-x exists on no host
    conf = cluster_conf(tmp_path / "guests", SHARED, nodes)
    site = build(lab, tmp_path, [{"a": RUN}, {"b": RUN}, {"c": RUN}], ["xvm"] * 3, conf)
    for op in ("off", "reboot"):
        res = site.xvm("xvm", "-t", "10", "-o", op, "-H", "node4")
        assert res.rc == 1 and "Operation failed" in res.output, res.output
    assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node4").rc == 2


# -- a key per host --------------------------------------------------------------------------


PER_HOST = {"xvm-host1": "host1.key", "xvm-host2": "host2.key", "xvm-host3": "host3.key"}
PER_HOST_NODES = {
    "node1": ("xvm-host1", "vm-a"),
    "node2": ("xvm-host2", "vm-b"),
    "node3": ("xvm-host3", "vm-c"),
}


def test_per_host_keys_fence_a_migrated_vm_through_its_old_device(lab: Lab, tmp_path: Path) -> None:
    conf = cluster_conf(tmp_path / "guests", PER_HOST, PER_HOST_NODES)
    # vm-a migrated from host 1 to host 3; node1 still points at host 1's device
    layouts = [{"a": OFF}, {"b": RUN}, {"a": RUN, "c": RUN}]
    site = build(lab, tmp_path, layouts, list(PER_HOST), conf)
    for _ in range(5):
        res = site.xvm("xvm-host1", "-t", "10", "-o", "status", "-H", "node1")
        assert res.rc == 0, res.output
    res = site.xvm("xvm-host1", "-t", "10", "-o", "off", "-H", "node1")
    assert res.rc == 0, res.output
    assert site.xvm("xvm-host3", "-t", "10", "-o", "status", "-H", "vm-c").rc == 0  # untouched
    assert site.xvm("xvm-host1", "-t", "10", "-o", "status", "-H", "node1").rc == 2
    assert "forwarded off 'vm-a' from host 1 -> success" in site.daemons[2].log()


def test_a_forward_whose_host_dies_mid_operation_fails_within_the_budget(
    lab: Lab, tmp_path: Path
) -> None:
    conf = cluster_conf(tmp_path / "guests", PER_HOST, PER_HOST_NODES)
    layouts = [{}, {"b": RUN, "a": RUN}, {"c": RUN}]  # vm-a runs on host 2
    site = build(lab, tmp_path, layouts, list(PER_HOST), conf)
    victim = site.daemons[1]
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGSTOP)  # host 2's xvmd hangs: the forward is never done
    t0 = time.monotonic()
    client = subprocess.Popen(
        site.guest.cmd(
            "/usr/sbin/fence_xvm", "-a", GROUP, "-p", str(PORT), "-k",
            str(conf.parent / "xvm-host1.key"), "-t", "40", "-o", "off", "-H", "node1",
        ),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # the request is authenticated and forwarded by now
    site.hosts[1].kill_corosync()  # ...and then host 2 dies altogether
    victim.proc.send_signal(signal.SIGKILL)
    out, _ = client.communicate(timeout=40)
    took = time.monotonic() - t0
    assert client.returncode == 1 and "Operation failed" in out, out
    assert took < 30, took  # within the budget, never a hang
    # the request's log line is written just after its answer left
    assert site.daemons[0].wait_for_log("host 2: its host left", timeout=5)


# -- a host that dies, a host that is cut off -----------------------------------------------------


def test_a_dead_hosts_vm_is_fenced_only_once_an_operator_confirmed_it(
    lab: Lab, tmp_path: Path
) -> None:
    conf = cluster_conf(tmp_path / "guests", SHARED, SHARED_NODES)
    site = build(lab, tmp_path, [{"a": RUN}, {"b": RUN}, {"c": RUN}], ["xvm"] * 3, conf)
    assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node2").rc == 0

    victim = site.daemons[1]
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)  # host 2 dies: xvmd and corosync at once
    site.hosts[1].kill_corosync()
    eventually(lambda: _members(site, 1) == [1, 3], timeout=20, what=site)

    # no proof yet: never reported off, never fenced; the log says how to prove it
    assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node2").rc == 1
    assert site.xvm("xvm", "-t", "10", "-o", "off", "-H", "node2").rc == 1
    assert site.daemons[0].wait_for_log("xvmd confirm-host-down node2", timeout=5)

    sock = str(site.hosts[0].scratch / "xvmd.sock")
    refused = run_xvmd_once(site.hosts[0], ["confirm-host-down", "node3", "--control", sock])
    assert refused.rc == 1 and "is a member of the group" in refused.output
    res = run_xvmd_once(site.hosts[0], ["confirm-host-down", "node2", "--control", sock])
    assert res.rc == 0, res.output

    # proven: fenced, answered by one host, the same whichever host the guest reaches first
    for _ in range(3):
        assert site.xvm("xvm", "-t", "10", "-o", "off", "-H", "node2").rc == 0
        assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node2").rc == 2
    assert site.xvm("xvm", "-t", "10", "-o", "status", "-H", "node1").rc == 0  # others untouched
    proofs = site.status(3)["hosts"]
    assert isinstance(proofs, dict) and proofs["proofs"][0]["name"] == "node2"
    trail = (site.hosts[0].scratch / "a.jsonl").read_text()
    assert '"op":"confirm-host-down"' in trail.replace(" ", "") and "accepted" in trail


def test_a_cut_off_hosts_vm_is_never_reported_fenced(lab: Lab, tmp_path: Path) -> None:
    conf = cluster_conf(tmp_path / "guests", SHARED, SHARED_NODES)
    site = build(lab, tmp_path, [{"a": RUN}, {"b": RUN}, {"c": RUN}], ["xvm"] * 3, conf)
    bridge_port = "vh3"
    site.bridge.ip("link", "set", bridge_port, "down")  # host 3 is cut off; vm-c keeps running
    eventually(lambda: _members(site, 1) == [1, 2], timeout=20, what=site)
    for op in ("status", "off", "reboot"):
        res = site.xvm("xvm", "-t", "10", "-o", op, "-H", "node3")
        assert res.rc == 1, (op, res.output)  # failure: never OFF, never fenced
    site.bridge.ip("link", "set", bridge_port, "up")  # it comes back: its VM answers again
    eventually(lambda: _members(site, 1) == [1, 2, 3], timeout=30, what=site)
    eventually(
        lambda: site.xvm("xvm", "-t", "5", "-o", "status", "-H", "node3").rc == 0,
        timeout=20,
        what=site,
    )


def _members(site: Site, n: int) -> list[int]:
    hosts = site.status(n).get("hosts")
    if not isinstance(hosts, dict):
        return []
    return sorted(int(m["node"]) for m in hosts.get("members", []))
