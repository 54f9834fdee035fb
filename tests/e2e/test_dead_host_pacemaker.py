"""A dead host's VM is fenced for the guest cluster as soon as the host cluster's Pacemaker has
fenced the host, and not before: three hosts with corosync, Pacemaker and xvmd, the stock
fence_xvm in a guest namespace, and a human's ``stonith_admin --confirm`` as the host cluster's
fencing (tests/support/pacemaker_lab.py runs Pacemaker without fence devices)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.test_multi_host import (
    RUN,
    SHARED,
    SHARED_NODES,
    _members,
    build,
    cluster_conf,
    eventually,
)
from tests.support.corosync_lab import Lab
from tests.support.pacemaker_lab import PacemakerLab, run

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("corosync_installed", "pacemaker_installed"),
]

NODES = {"node1", "node2", "node3"}


def test_a_dead_hosts_vm_is_fenced_once_pacemaker_fenced_the_host(lab: Lab, tmp_path: Path) -> None:
    conf = cluster_conf(tmp_path / "guests", SHARED, SHARED_NODES)
    site = build(lab, tmp_path, [{"a": RUN}, {"b": RUN}, {"c": RUN}], ["xvm"] * 3, conf)
    pcmk = PacemakerLab()
    try:
        for n, host in enumerate(site.hosts, start=1):
            pcmk.add(f"node{n}", host).start()
        pcmk.wait_online(NODES, at="node1")

        victim = site.daemons[1]
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)  # host 2 dies: xvmd, Pacemaker, corosync
        pcmk.members["node2"].kill()
        site.hosts[1].kill_corosync()
        eventually(lambda: _members(site, 1) == [1, 3], timeout=20, what=site)
        assert site.xvm("xvm", "-t", "8", "-o", "off", "-H", "node2").rc == 1  # no proof yet

        res = run(pcmk.members["node1"].cmd("stonith_admin", "--confirm=node2"))
        assert res.returncode == 0, res.stdout + res.stderr
        t0 = time.monotonic()
        eventually(
            lambda: site.xvm("xvm", "-t", "5", "-o", "off", "-H", "node2").rc == 0,
            timeout=30,
            what=site,
        )
        print(f"\nfenced for the guest {time.monotonic() - t0:.1f}s after stonith_admin --confirm")
        assert site.xvm("xvm", "-t", "8", "-o", "status", "-H", "node2").rc == 2
        assert any(
            d.wait_for_log("is proven down (fenced", timeout=1)
            for d in (site.daemons[0], site.daemons[2])
        )
    finally:
        pcmk.close()
