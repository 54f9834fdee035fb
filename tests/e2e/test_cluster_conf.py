"""cluster.conf mode with the stock fence_xvm: node names map to VMs, everything else is refused,
and the running daemon follows edits (or ignores broken ones) without a restart."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.support.harness import FIXTURES, ClientResult, Netns, Xvmd, fence_xvm, run_xvmd_once

pytestmark = pytest.mark.e2e

NODE5 = (
    '    <clusternode name="node5" nodeid="5"><fence><method name="1">'
    '<device name="xvm-host1" port="vm-05"/></method></fence></clusternode>\n'
)


class Deployment:
    """A copy of fixtures/ccs/two-host.conf and its keys (mode 0600) in a scratch directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "cluster.conf"
        self.keys = {}
        for host in ("host1", "host2"):
            key = root / f"{host}.key"
            shutil.copy(FIXTURES / "keys" / f"{host}.key", key)
            key.chmod(0o600)
            self.keys[host] = key
        text = (FIXTURES / "ccs" / "two-host.conf").read_text()
        # The guests' requests come from 127.0.0.1 here: that is node1's address.
        text = text.replace(
            '<clusternode name="node1" nodeid="1">',
            '<clusternode name="node1" nodeid="1"><altname name="127.0.0.1"/>',
        )
        self.base = self.text = text.replace("../keys/", "")
        self.conf.write_text(self.text)

    def rewrite(self, text: str) -> None:
        """Replace the file the way editors and config tools do: write aside, rename over."""
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        os.rename(tmp, self.conf)
        self.text = text

    def bumped(self, version: int, extra_nodes: str = "") -> str:
        """The original file with another config_version (and more nodes)."""
        text = re.sub(r'config_version="\d+"', f'config_version="{version}"', self.base)
        return text.replace("  </clusternodes>", extra_nodes + "  </clusternodes>")


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return Deployment(tmp_path / "etc")


@pytest.fixture
def daemon(start_xvmd: XvmdFactory, deployment: Deployment) -> Xvmd:
    return start_xvmd_ccs(start_xvmd, deployment)


def start_xvmd_ccs(start: XvmdFactory, dep: Deployment, *extra: str) -> Xvmd:
    return start("-f", str(dep.conf), *extra, no_ccs=False)


def xvm(netns: Netns, d: Xvmd, key: Path, *args: str) -> ClientResult:
    return fence_xvm(netns, "-p", str(d.port), "-k", str(key), "-t", "5", *args)


def wait_until(check, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``check()`` held; fails the test at the timeout."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - t0


def test_node_names_map_to_their_vms(netns: Netns, daemon: Xvmd, deployment: Deployment) -> None:
    key = deployment.keys["host1"]
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node1").rc == 0
    res = xvm(netns, daemon, key, "-o", "off", "-H", "node1")
    assert res.rc == 0, res.output + daemon.log()
    assert xvm(netns, daemon, key, "-o", "status", "-H", "vm-01").rc == 2  # node1's VM is off
    assert xvm(netns, daemon, key, "-o", "on", "-H", "NODE1").rc == 0  # names fold case
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node2-ring1").rc == 0  # altname
    assert daemon.wait_for_log("127.0.0.1 [xvm-host1] off 'node1' (domain vm-01) -> success")


def test_vms_outside_the_cluster_are_refused(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    key = deployment.keys["host1"]
    for op, target in [
        ("off", "vm-05"),
        ("reboot", "WebServer"),
        ("status", "nosuch"),
        ("on", "off-1"),
    ]:
        res = xvm(netns, daemon, key, "-o", op, "-H", target)
        assert res.rc == 3, (op, target, res.output)
        assert "Permission denied" in res.output
    uuid_of_vm05 = "00000005-0000-4000-8000-5eed00000005"
    assert xvm(netns, daemon, key, "-o", "off", "-H", uuid_of_vm05).rc == 3
    assert xvm(netns, daemon, key, "-o", "status", "-H", "vm-05").rc == 3
    # The refused VM is untouched, and list shows only the cluster's VMs.
    listed = xvm(netns, daemon, key, "-o", "list").stdout
    assert [ln.split()[0] for ln in listed.splitlines()] == ["vm-01", "vm-02"]
    assert daemon.wait_for_log("-> denied")


def test_each_key_reaches_only_its_own_devices_nodes(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    h1, h2 = deployment.keys["host1"], deployment.keys["host2"]
    assert "serving device xvm-host2" in daemon.log()
    assert xvm(netns, daemon, h2, "-o", "status", "-H", "node3").rc == 0
    assert xvm(netns, daemon, h2, "-o", "status", "-H", "node1").rc == 3
    assert xvm(netns, daemon, h1, "-o", "status", "-H", "node3").rc == 3


def test_device_selection_limits_what_is_served(
    netns: Netns, start_xvmd: XvmdFactory, deployment: Deployment
) -> None:
    d = start_xvmd_ccs(start_xvmd, deployment, "-D", "xvm-host2")
    assert "serving device xvm-host2" in d.log()
    assert "serving device xvm-host1" not in d.log()
    res = xvm(
        netns, d, deployment.keys["host1"], "-t", "2", "-r", "10", "-o", "status", "-H", "node1"
    )
    assert res.rc == 1 and "Timed out" in res.output  # host1's key is not accepted here


def test_valid_edit_is_followed_within_a_second(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    key = deployment.keys["host1"]
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node5").rc == 3
    deployment.rewrite(deployment.bumped(8, NODE5))
    took = wait_until(lambda: "config_version 7 -> 8" in daemon.log())
    assert took < 1.0, took
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node5").rc == 0


def test_broken_edit_keeps_the_old_config_while_serving(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    key = deployment.keys["host1"]
    good = deployment.text
    deployment.rewrite(good.replace("</cluster>", ""))  # not well-formed
    wait_until(lambda: "new configuration rejected" in daemon.log())
    assert re.search(r"cluster\.conf:\d+: error xml-syntax", daemon.log())
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node1").rc == 0
    # Valid XML, bumped version, but a semantic error: also rejected, with its code and line.
    broken = deployment.bumped(9).replace('nodeid="2"', 'nodeid="1"')
    deployment.rewrite(broken)
    wait_until(lambda: "error duplicate-nodeid" in daemon.log())
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node2").rc == 0
    assert xvm(netns, daemon, key, "-o", "off", "-H", "vm-05").rc == 3  # old map still rules


def test_edit_without_version_bump_is_ignored(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    key = deployment.keys["host1"]
    deployment.rewrite(deployment.bumped(7, NODE5))
    wait_until(lambda: "config_version 7 is not greater" in daemon.log())
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node5").rc == 3


def test_key_rotation_is_applied_without_a_version_bump(
    netns: Netns, daemon: Xvmd, deployment: Deployment, tmp_path: Path
) -> None:
    old = tmp_path / "old.key"
    shutil.copy(deployment.keys["host1"], old)
    new = tmp_path / "new.key"
    new.write_bytes(os.urandom(4096))
    new.chmod(0o600)
    staged = deployment.root / "host1.key.new"
    shutil.copy(new, staged)
    os.rename(staged, deployment.keys["host1"])
    wait_until(lambda: "key files changed" in daemon.log())
    assert xvm(netns, daemon, new, "-o", "status", "-H", "node1").rc == 0
    res = xvm(netns, daemon, old, "-t", "2", "-r", "10", "-o", "status", "-H", "node1")
    assert res.rc == 1


def test_reload_under_churn_ends_on_the_last_valid_edit(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    key = deployment.keys["host1"]
    edits = []
    for version in range(8, 107):  # 99 rapid edits, every third one broken ...
        text = deployment.bumped(version)
        edits.append(text.replace("</cluster>", "") if version % 3 == 0 else text)
    edits.append(deployment.bumped(107, NODE5))  # ... and the 100th, the last, valid
    for text in edits:
        deployment.rewrite(text)
    wait_until(lambda: "-> 107: now serving" in daemon.log(), timeout=10)
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node5").rc == 0
    time.sleep(0.5)  # nothing older may be applied after the last edit
    last = [ln for ln in daemon.log().splitlines() if "reloaded" in ln][-1]
    assert "-> 107" in last


def test_sighup_forces_a_reload(daemon: Xvmd) -> None:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.wait_for_log("configuration unchanged")


def test_fence_xvmd_settings_apply_unless_overridden(
    netns: Netns, start_xvmd: XvmdFactory, deployment: Deployment, port: int
) -> None:
    deployment.rewrite(
        deployment.text.replace("<fence_xvmd/>", f'<fence_xvmd port="{port}" hash="sha512"/>')
    )
    d = start_xvmd("-f", str(deployment.conf), no_ccs=False, omit_port=True)
    assert f"port {port}" in d.log() and "hash >= sha512" in d.log()
    key = deployment.keys["host1"]
    res = fence_xvm(
        netns,
        "-p",
        str(port),
        "-k",
        str(key),
        "-t",
        "5",
        "-c",
        "sha512",
        "-o",
        "status",
        "-H",
        "node1",
    )
    assert res.rc == 0, res.output + d.log()
    d.stop()
    d2 = start_xvmd("-f", str(deployment.conf), "--hash", "sha256", no_ccs=False)
    assert f"port {d2.port}" in d2.log() and "hash >= sha256" in d2.log()


def test_invalid_cluster_conf_refuses_to_start(
    netns: Netns, deployment: Deployment, port: int
) -> None:
    deployment.rewrite(deployment.text.replace('nodeid="2"', 'nodeid="1"'))
    res = run_xvmd_once(
        netns,
        [
            "--local",
            "-f",
            str(deployment.conf),
            "-p",
            str(port),
            "-I",
            "lo",
            "-U",
            "test:///default",
        ],
    )
    assert res.rc == 1
    assert re.search(r"cluster\.conf:\d+: error duplicate-nodeid", res.stderr), res.stderr
    assert "not starting" in res.stderr


def test_deleted_and_recreated_file_is_followed(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    key = deployment.keys["host1"]
    deployment.conf.unlink()
    wait_until(lambda: "config-unreadable" in daemon.log())
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node1").rc == 0  # last good config
    deployment.conf.write_text(deployment.bumped(8, NODE5))  # recreated in place
    wait_until(lambda: "config_version 7 -> 8" in daemon.log())
    assert xvm(netns, daemon, key, "-o", "status", "-H", "node5").rc == 0


def test_requests_from_an_address_that_is_no_cluster_node_get_no_callback(
    netns: Netns, start_xvmd: XvmdFactory, deployment: Deployment
) -> None:
    """The requester is checked before any connection is made: xvmd never calls back an
    address that belongs to no cluster node, so the client just times out."""
    deployment.rewrite(
        deployment.text.replace('<altname name="127.0.0.1"/>', '<altname name="127.0.0.9"/>')
    )
    d = start_xvmd_ccs(start_xvmd, deployment)
    key = deployment.keys["host1"]
    for op in ("status", "off", "list"):
        res = xvm(netns, d, key, "-o", op, "-H", "node2")
        assert res.rc == 1 and "Timed out waiting for response" in res.output, (op, res.output)
    # Reported once per request (by housekeeping, once no other copy was served), and counted.
    assert d.wait_for_log("requester 127.0.0.1 is no node of cluster 'guests'", timeout=10)
    assert "dropped without answer" in d.log()
    assert "cannot call back" not in d.log()
    assert "unresolved-node" in d.log()  # node2..4 have no address here: said at start


def test_status_shows_config_map_and_recent_requests(
    netns: Netns, daemon: Xvmd, deployment: Deployment
) -> None:
    key = deployment.keys["host1"]
    assert xvm(netns, daemon, key, "-o", "off", "-H", "node1").rc == 0
    assert xvm(netns, daemon, key, "-o", "off", "-H", "vm-05").rc == 3
    control = daemon.args[daemon.args.index("--control") + 1]
    human = run_xvmd_once(netns, ["status", "--control", control])
    assert human.rc == 0, human.output  # --local: this host may fence
    out = human.stdout
    assert "local mode" in out and "quorum: not checked (--local)" in out
    assert "cluster 'guests', config_version 7" in out
    assert "node1 -> vm-01" in out and "node3 -> vm-03" in out
    assert re.search(r"127\.0\.0\.1 \[xvm-host1\] off node1 \(vm-01\) -> success", out), out
    assert re.search(r"off vm-05 -> denied: 'vm-05' is no node or VM", out), out
    as_json = run_xvmd_once(netns, ["status", "--control", control, "--json"])
    doc = json.loads(as_json.stdout)
    assert doc["mode"] == "local" and doc["quorum"] is None
    assert doc["counters"]["answered"]["denied"] == 1
    assert [r["result"] for r in doc["recent"]] == ["success", "denied"]


def test_status_without_a_daemon_says_so(netns: Netns, tmp_path: Path) -> None:
    res = run_xvmd_once(netns, ["status", "--control", str(tmp_path / "none.sock")])
    assert res.rc == 2
    assert "xvmd is not running" in res.stderr
