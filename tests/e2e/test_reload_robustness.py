"""A careless edit never ends live reload: huge numbers, /dev/zero, FIFOs and symlinked files,
against the running daemon and the stock fence_xvm."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.e2e.test_cluster_conf import NODE5, Deployment, start_xvmd_ccs, wait_until, xvm
from tests.support.harness import Netns, Xvmd, run_xvmd_once
from tests.support.inside import status

pytestmark = pytest.mark.e2e


def replace_with(dep: Deployment, make: object) -> None:
    """Put something else at cluster.conf's path the way a tool would: make it aside, rename."""
    aside = dep.root / "aside"
    make(aside)  # type: ignore[operator]
    os.rename(aside, dep.conf)


def test_a_huge_number_is_refused_and_reload_goes_on(
    netns: Netns, start_xvmd: XvmdFactory, tmp_path: Path
) -> None:
    dep = Deployment(tmp_path / "etc")
    d = start_xvmd_ccs(start_xvmd, dep)
    key = dep.keys["host1"]
    dep.rewrite(dep.bumped(8).replace('nodeid="2"', f'nodeid="{"9" * 5000}"'))
    wait_until(lambda: "new configuration rejected" in d.log())
    assert "error bad-number" in d.log()
    doc = status(d)
    assert doc["reload"]["failures"] == 1
    assert "bad-number" in doc["reload"]["last_problem"]
    # The reloader is alive: the next valid edit is applied, and SIGHUP still works.
    dep.rewrite(dep.bumped(9, NODE5))
    wait_until(lambda: "config_version 7 -> 9" in d.log())
    assert xvm(netns, d, key, "-o", "status", "-H", "node5").rc == 0
    assert status(d)["config"]["reloads"] == 1
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_for_log("configuration unchanged")


def test_dev_zero_and_a_fifo_in_place_of_cluster_conf_are_refused(
    netns: Netns, start_xvmd: XvmdFactory, tmp_path: Path
) -> None:
    dep = Deployment(tmp_path / "etc")
    d = start_xvmd_ccs(start_xvmd, dep)
    key = dep.keys["host1"]
    replace_with(dep, lambda p: os.symlink("/dev/zero", p))
    wait_until(lambda: "character device" in d.log() or "not a regular file" in d.log())
    assert "config-unreadable" in d.log()
    replace_with(dep, os.mkfifo)
    wait_until(lambda: status(d)["reload"]["failures"] >= 2)
    assert "FIFO" in status(d)["reload"]["last_problem"]
    assert xvm(netns, d, key, "-o", "status", "-H", "node1").rc == 0  # still serving
    dep.rewrite(dep.bumped(8, NODE5))
    wait_until(lambda: "config_version 7 -> 8" in d.log())
    # A FIFO again, then a stop: nothing is blocked on it, so SIGTERM ends the daemon.
    replace_with(dep, os.mkfifo)
    wait_until(lambda: status(d)["reload"]["failures"] >= 3)
    t0 = time.monotonic()
    assert d.stop(timeout=20) == 0
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_start_up_refuses_a_cluster_conf_that_is_not_a_file(
    netns: Netns, tmp_path: Path, kind: str
) -> None:
    conf = tmp_path / "cluster.conf"
    if kind == "fifo":
        os.mkfifo(conf)
    else:
        os.symlink("/dev/zero", conf)
    args = ["--local", "-f", str(conf), "--control", "none", "--audit", "none", "-p", "21990"]
    try:
        res = run_xvmd_once(netns, args, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("xvmd hung on a cluster.conf that is not a regular file")
    assert res.rc == 1, res.output
    assert "not a regular file" in res.output
    assert "Traceback" not in res.output


def _symlinked(tmp_path: Path) -> tuple[Deployment, Path]:
    """cluster.conf and the keys live in real/; etc/ holds only symlinks to them."""
    real = Deployment(tmp_path / "real")
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("cluster.conf", "host1.key", "host2.key"):
        os.symlink(real.root / name, etc / name)
    return real, etc / "cluster.conf"


def test_edits_of_symlinked_files_are_followed(
    netns: Netns, start_xvmd: XvmdFactory, tmp_path: Path
) -> None:
    real, link = _symlinked(tmp_path)
    d = start_xvmd("-f", str(link), no_ccs=False)
    old_key = tmp_path / "old.key"
    old_key.write_bytes(real.keys["host1"].read_bytes())
    # An edit of the target, in its own directory (the link's directory sees no event).
    real.rewrite(real.bumped(8, NODE5))
    wait_until(lambda: "config_version 7 -> 8" in d.log())
    assert xvm(netns, d, old_key, "-o", "status", "-H", "node5").rc == 0
    # A key rotated behind its symlink is picked up too.
    new_key = real.root / "host1.key.new"
    new_key.write_bytes(os.urandom(512))
    new_key.chmod(0o600)
    os.rename(new_key, real.keys["host1"])
    wait_until(lambda: "key files changed" in d.log())
    assert xvm(netns, d, real.keys["host1"], "-o", "status", "-H", "node1").rc == 0


def test_a_symlink_repointed_to_another_file_is_followed(
    netns: Netns, start_xvmd: XvmdFactory, tmp_path: Path
) -> None:
    real, link = _symlinked(tmp_path)
    d: Xvmd = start_xvmd("-f", str(link), no_ccs=False)
    other = real.root / "cluster-v8.conf"
    other.write_text(real.bumped(8, NODE5))
    staged = link.with_name("staged")
    os.symlink(other, staged)
    os.rename(staged, link)  # atomic re-point, as configuration tools do
    wait_until(lambda: "config_version 7 -> 8" in d.log())
    # ... and from now on the new target's edits are the ones followed.
    other.write_text(real.bumped(9, NODE5))
    wait_until(lambda: "config_version 8 -> 9" in d.log())
