"""Through a real libvirtd: the power changes are visible to virsh, and a lost connection heals.

libvirtd runs in the test's network namespace and in a private mount namespace (tmpfs /run),
with its RPC socket in the test's scratch directory, so it never touches the system instance.
``test+unix:///default`` is shared between connections while one stays open; xvmd holds one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.support.harness import Netns, fence_xvm, run
from tests.support.inside import status
from xvmd.daemon.daemon import DRAIN_TIMEOUT

pytestmark = [pytest.mark.e2e, pytest.mark.libvirtd]


class Libvirtd:
    def __init__(self, netns: Netns, scratch: Path) -> None:
        self.netns = netns
        self.scratch = scratch
        self.sock_dir = scratch / "sock"
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        self.conf = scratch / "libvirtd.conf"
        self.conf.write_text(
            f'unix_sock_dir = "{self.sock_dir}"\nunix_sock_rw_perms = "0770"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.uri = f"test+unix:///default?socket={self.sock_dir}/libvirt-sock"

    def start(self) -> None:
        sock = self.sock_dir / "libvirt-sock"
        sock.unlink(missing_ok=True)
        inner = f"mount -t tmpfs tmpfs /run && exec libvirtd -f {self.conf}"
        with open(self.scratch / "libvirtd.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.netns.cmd("unshare", "-m", "--propagation", "private", "sh", "-c", inner),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sock.exists() and self.virsh("uri").returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("libvirtd did not come up")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["virsh", "-c", self.uri, *args], check=False, timeout=20)

    def domstate(self, name: str) -> str:
        return self.virsh("domstate", name).stdout.strip()


@pytest.fixture
def libvirtd(tmp_path: Path) -> Iterator[Libvirtd]:
    ns = Netns()
    lv = Libvirtd(ns, tmp_path / "libvirtd")
    try:
        lv.start()
        yield lv
    finally:
        lv.kill()
        ns.close()


def test_off_and_on_really_happen_in_libvirtd(
    libvirtd: Libvirtd, start_xvmd: XvmdFactory, key_file: Path
) -> None:
    d = start_xvmd(uri=libvirtd.uri, ns=libvirtd.netns)
    ns = libvirtd.netns
    common = ["-p", str(d.port), "-k", str(key_file), "-t", "10"]
    assert libvirtd.domstate("test") == "running"
    res = fence_xvm(ns, *common, "-o", "off", "-H", "test")
    assert res.rc == 0, res.output + d.log()
    assert libvirtd.domstate("test") == "shut off"
    assert fence_xvm(ns, *common, "-o", "status", "-H", "test").rc == 2
    res = fence_xvm(ns, *common, "-o", "on", "-H", "test")
    assert res.rc == 0, res.output + d.log()
    assert libvirtd.domstate("test") == "running"
    res = fence_xvm(ns, *common, "-o", "reboot", "-H", "test")
    assert res.rc == 0, res.output + d.log()
    assert libvirtd.domstate("test") == "running"
    uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f"
    assert fence_xvm(ns, *common, "-o", "off", "-H", uuid).rc == 0
    assert libvirtd.domstate("test") == "shut off"


def test_lost_libvirtd_connection_fails_fast_and_heals_without_restart(
    libvirtd: Libvirtd, start_xvmd: XvmdFactory, key_file: Path
) -> None:
    d = start_xvmd(uri=libvirtd.uri, ns=libvirtd.netns)
    ns = libvirtd.netns
    common = ["-p", str(d.port), "-k", str(key_file), "-t", "10"]
    assert fence_xvm(ns, *common, "-o", "monitor").rc == 0
    libvirtd.kill()
    down = fence_xvm(ns, *common, "-o", "monitor")
    assert down.rc == 1, down.output  # an honest failure, not a hang
    assert down.seconds < 5
    status = fence_xvm(ns, *common, "-o", "off", "-H", "test")
    assert status.rc == 1
    libvirtd.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if fence_xvm(ns, *common, "-o", "monitor").rc == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail("xvmd did not reconnect to libvirtd:\n" + d.log())
    assert fence_xvm(ns, *common, "-o", "status", "-H", "test").rc == 0
    assert d.proc is not None and d.proc.poll() is None
    assert "lost" in d.log()


def test_hung_libvirtd_fails_requests_within_budget_in_parallel(
    libvirtd: Libvirtd, start_xvmd: XvmdFactory, key_file: Path
) -> None:
    d = start_xvmd(uri=libvirtd.uri, ns=libvirtd.netns)
    ns = libvirtd.netns
    assert libvirtd.proc is not None
    common = ["-p", str(d.port), "-k", str(key_file), "-t", "30"]
    assert fence_xvm(ns, *common, "-o", "status", "-H", "test").rc == 0
    os.kill(libvirtd.proc.pid, signal.SIGSTOP)  # libvirtd stops answering, sockets stay open
    try:
        t0 = time.monotonic()
        clients = [
            subprocess.Popen(
                ns.cmd("fence_xvm", *common, "-o", op, "-H", "test"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for op in ("status", "off", "monitor")
        ]
        rcs = [c.wait(timeout=60) for c in clients]
        elapsed = time.monotonic() - t0
    finally:
        os.kill(libvirtd.proc.pid, signal.SIGCONT)
    # The status is answered from the hypervisor's last events (running: nothing changed it,
    # a frozen libvirtd changes nothing) until keepalive finds the event connection dead; the
    # off and the monitor, which must ask libvirtd, fail on their own budgets (25 s, 10 s),
    # concurrently: a serial daemon would have needed the sum, or hung for ever.
    assert rcs == [0, 1, 1]
    assert elapsed < 30, elapsed
    assert fence_xvm(ns, *common, "-o", "status", "-H", "test").rc == 0
    assert "no answer from the hypervisor within" in d.log()


def test_stop_with_a_wedged_libvirtd_ends_and_records_the_unknown_outcome(
    libvirtd: Libvirtd, start_xvmd: XvmdFactory, key_file: Path, tmp_path: Path
) -> None:
    d = start_xvmd(uri=libvirtd.uri, ns=libvirtd.netns)
    ns = libvirtd.netns
    assert libvirtd.proc is not None and d.proc is not None
    common = ["-p", str(d.port), "-k", str(key_file), "-t", "40"]
    assert fence_xvm(ns, *common, "-o", "status", "-H", "test").rc == 0
    os.kill(libvirtd.proc.pid, signal.SIGSTOP)
    client = subprocess.Popen(ns.cmd("fence_xvm", *common, "-o", "off", "-H", "test"))
    try:
        deadline = time.monotonic() + 10
        while status(d)["active_sessions"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # authenticated and waiting on the frozen hypervisor
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("xvmd did not stop while libvirtd was wedged:\n" + d.log())
        stopped_in = time.monotonic() - t0
        client_rc = client.wait(timeout=60)
    finally:
        os.kill(libvirtd.proc.pid, signal.SIGCONT)
        if client.poll() is None:
            client.kill()
    assert rc == 0, d.log()
    assert stopped_in < DRAIN_TIMEOUT + 8, stopped_in
    assert client_rc != 0  # told nothing: never a false "done"
    audit = tmp_path / f"audit-{d.port}.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    offs = [r for r in records if r["op"] == "off"]
    assert [r["result"] for r in offs] == ["unknown"], records
    assert "outcome of off is unknown" in offs[0]["detail"]
    assert "result unknown" in d.log()
