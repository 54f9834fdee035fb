"""A real Pacemaker guest cluster served from its exported CIB and corosync.conf (issue 15).

The guest: one corosync + Pacemaker node (tests/support/pacemaker_lab.py) in a namespace on a
bridge, with a fence_xvm stonith device created by ``cibadmin`` (key file, multicast group,
port, ``pcmk_host_map``). The host: xvmd ``--local -f cib.xml`` with the test driver's domains,
reading the guest cluster's configuration as an operator copies it: ``cibadmin -Q`` and the
guests' corosync.conf, side by side. A stranger on the same bridge has the key too.

Checked: Pacemaker's fencer fences the mapped node through xvmd (``stonith_admin --reboot``);
a VM outside the map is refused after authentication (3); a non-member is refused too: over
the ``fence_virt -T`` TCP listener with 3, over multicast by no connect-back at all (a member
with several addresses sends a copy from each, and the stock client takes only the first
connect-back, so a refusal to a copy would cost the member its answer; docs/cluster-mode.md);
an edited CIB, exported again and renamed into place, is served without a restart.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.corosync_lab import Lab, Node, corosync_conf
from tests.support.harness import (
    DOMAINS_XML,
    FENCE_VIRT,
    FIXTURES,
    ClientResult,
    Netns,
    Xvmd,
    fence_xvm,
)
from tests.support.multihost_lab import GROUP, make_bridge, plug
from tests.support.pacemaker_lab import Pacemaker, PacemakerLab, eventually, run

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("corosync_installed", "pacemaker_installed"),
]

PORT = 22241
GUEST, HOST, STRANGER = "10.78.0.11", "10.78.0.1", "10.78.0.50"
DEVICE = """<primitive class="stonith" id="xvm-host" type="fence_xvm">
  <instance_attributes id="xvm-host-ia">
    <nvpair id="xvm-host-key" name="key_file" value="{key}"/>
    <nvpair id="xvm-host-group" name="multicast_address" value="{group}"/>
    <nvpair id="xvm-host-port" name="ipport" value="{port}"/>
    <nvpair id="xvm-host-map" name="pcmk_host_map" value="node1:vm-01"/>
  </instance_attributes>
</primitive>"""


@dataclass
class Site:
    guest: Pacemaker
    guest_node: Node
    stranger: Netns
    host: Netns
    key: Path
    export: Path  # the host's copy of the CIB; corosync.conf beside it
    xvmd: Xvmd

    def xvm(self, where: Netns | Node, *args: str) -> ClientResult:
        return fence_xvm(where, "-a", GROUP, "-p", str(PORT), "-k", str(self.key), "-t", "5", *args)

    def export_cib(self) -> None:
        """What the operator does: cibadmin -Q on the guest, copied to the host, renamed."""
        res = run(self.guest.cmd("cibadmin", "--query"))
        assert res.returncode == 0, res.stderr
        part = self.export.with_suffix(".new")
        part.write_text(res.stdout)
        os.replace(part, self.export)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    lab = Lab(tmp_path)
    pcmk = PacemakerLab()
    try:
        bridge = make_bridge(lab, "xvmd-pbr")
        guest_ns, host, stranger = (lab.netns(p) for p in ("xvmd-pg", "xvmd-ph", "xvmd-px"))
        for ns, port, addr in (
            (guest_ns, "vg", GUEST),
            (host, "vh", HOST),
            (stranger, "vx", STRANGER),
        ):
            plug(bridge, ns, port, addr)
        node = lab.node("guest", guest_ns)
        node.start_corosync(corosync_conf(node.scratch, [(1, GUEST)], name="guests"))
        guest = pcmk.add("node1", node)
        guest.start()
        pcmk.wait_online({"node1"}, "node1")
        key = tmp_path / "host.key"
        shutil.copy(FIXTURES / "keys" / "host1.key", key)
        key.chmod(0o600)
        xml = DEVICE.format(key=key, group=GROUP, port=PORT)
        res = run(guest.cmd("cibadmin", "--create", "-o", "resources", "--xml-text", xml))
        assert res.returncode == 0, res.stderr
        conf_dir = tmp_path / "guests"
        conf_dir.mkdir()
        shutil.copy(node.scratch / "corosync.conf", conf_dir / "corosync.conf")
        export = conf_dir / "cib.xml"
        args = ["--local", "-f", str(export), "-I", "eth0", "-p", str(PORT), "--tcp", HOST]
        args += ["-U", f"test://{DOMAINS_XML}", "--control", str(tmp_path / "x.sock")]
        s = Site(guest, node, stranger, host, key, export, None)  # type: ignore[arg-type]
        s.export_cib()
        s.xvmd = Xvmd(host, args, tmp_path / "xvmd.log", port=PORT).start()
        try:
            yield s
        finally:
            s.xvmd.stop()
    finally:
        pcmk.close()
        lab.close()


def test_a_pacemaker_guest_cluster_gets_the_cluster_aware_checks(site: Site) -> None:
    # Pacemaker's own fencer, through the device it has in its CIB.
    res = run(site.guest.cmd("stonith_admin", "--reboot", "node1", "--timeout", "30"), timeout=60)
    assert res.returncode == 0, (res.stdout, res.stderr, site.xvmd.log()[-2000:])
    assert "reboot 'vm-01'" in site.xvmd.log() or "reboot 'node1'" in site.xvmd.log()
    # The mapped node, by its name, from the node itself.
    assert site.xvm(site.guest_node, "-o", "status", "-H", "node1").rc == 0
    # A VM outside the map: refused after authentication.
    outside = site.xvm(site.guest_node, "-o", "off", "-H", "vm-02")
    assert outside.rc == 3 and "Permission denied" in outside.output, outside.output
    # A stranger with the key is not a member of the guest cluster.
    stranger = site.xvm(site.stranger, "-o", "off", "-H", "node1")
    assert "Timed out waiting for response" in stranger.output, stranger.output
    eventually(lambda: f"requester {STRANGER} is no node" in site.xvmd.log(), 10, "logged")
    tcp = ["-T", HOST, "-p", str(PORT), "-k", str(site.key), "-t", "5", "-o", "off", "-H", "node1"]
    refused = fence_xvm(site.stranger, *tcp, program=FENCE_VIRT)
    assert refused.rc == 3 and "Permission denied" in refused.output, refused.output
    assert fence_xvm(site.guest_node, *tcp[:-4], "-o", "status", "-H", "node1",
                     program=FENCE_VIRT).rc == 0  # fmt: skip


def test_an_edited_cib_export_is_served_without_a_restart(site: Site) -> None:
    assert site.xvm(site.guest_node, "-o", "status", "-H", "vm-03").rc == 3
    res = run(
        site.guest.cmd(
            "cibadmin", "--modify", "--xml-text",
            '<nvpair id="xvm-host-map" name="pcmk_host_map" value="node1:vm-03"/>',
        )
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    site.export_cib()
    eventually(lambda: "reloaded" in site.xvmd.log(), 10, "xvmd reloaded the CIB export")
    time.sleep(0.2)
    assert site.xvm(site.guest_node, "-o", "status", "-H", "node1").rc == 0  # now vm-03
    assert site.xvm(site.guest_node, "-o", "status", "-H", "vm-01").rc == 3
