"""What an operator relies on: systemd notifications, the audit trail, its reader."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.support.harness import FIXTURES, Netns, fence_xvm, run_xvmd_once

pytestmark = pytest.mark.e2e


class FakeSystemd:
    """A NOTIFY_SOCKET that records what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def collect(self, until: str, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.messages:
                if until in msg:
                    self.messages.remove(msg)
                    return msg
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        raise AssertionError(f"no {until} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_systemd_ready_reloading_watchdog_and_stopping(
    start_xvmd: XvmdFactory, tmp_path: Path
) -> None:
    notify = FakeSystemd(tmp_path / "notify.sock")
    try:
        conf = tmp_path / "etc" / "cluster.conf"
        conf.parent.mkdir()
        key = conf.parent / "host1.key"
        key.write_bytes((FIXTURES / "keys" / "host1.key").read_bytes())
        key.chmod(0o600)
        text = (FIXTURES / "ccs" / "two-host.conf").read_text().replace("../keys/", "")
        conf.write_text(text)
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
        d = start_xvmd("-f", str(conf), no_ccs=False, env=env)
        ready = notify.collect("READY")
        assert ready["READY"] == "1" and int(ready["MAINPID"]) > 0
        assert "serving" in ready["STATUS"]
        assert notify.collect("WATCHDOG")["WATCHDOG"] == "1"
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        assert notify.collect("RELOADING")["RELOADING"] == "1"
        assert notify.collect("READY")["STATUS"] == "config_version 7"
        d.proc.send_signal(signal.SIGTERM)
        assert notify.collect("STOPPING")["STOPPING"] == "1"
        assert d.proc.wait(15) == 0
    finally:
        notify.close()


def _audit_path(d_args: list[str]) -> Path:
    return Path(d_args[d_args.index("--audit") + 1])


def test_power_action_is_on_disk_before_the_answer_even_with_kill_9(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    common = ["-p", str(d.port), "-k", str(key_file), "-t", "5"]
    res = fence_xvm(netns, *common, "-o", "off", "-H", "vm-14")
    assert res.rc == 0
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGKILL)  # no chance to flush anything after the answer
    d.proc.wait(5)
    records = [json.loads(line) for line in _audit_path(d.args).read_text().splitlines()]
    off = [r for r in records if r["op"] == "off"]
    assert len(off) == 1
    rec = off[0]
    assert (rec["requester"], rec["target"], rec["result"]) == ("127.0.0.1", "vm-14", "success")
    assert rec["quorum"] == "not checked" and rec["detail"].startswith("powered off")
    assert rec["time"].endswith("Z") and rec["ms"] >= 0 and "seqno" in rec


def test_audit_command_answers_who_fenced_what_when(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, tmp_path: Path
) -> None:
    d = start_xvmd()
    common = ["-p", str(d.port), "-k", str(key_file), "-t", "5"]
    assert fence_xvm(netns, *common, "-o", "reboot", "-H", "vm-15").rc == 0
    assert fence_xvm(netns, *common, "-o", "off", "-H", "nosuch").rc == 1
    assert fence_xvm(netns, *common, "-o", "status", "-H", "vm-15").rc == 0
    d.stop()
    path = str(_audit_path(d.args))
    table = run_xvmd_once(netns, ["audit", "--file", path])
    assert table.rc == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["TIME", "REQUESTER", "DEVICE", "OP", "TARGET", "RESULT"]
    assert any(" reboot " in ln and "vm-15" in ln and " success " in ln for ln in lines)
    assert any(" off " in ln and "nosuch" in ln and " failed " in ln for ln in lines)
    only = run_xvmd_once(netns, ["audit", "--file", path, "--target", "VM-15", "--json"])
    ops = [json.loads(ln)["op"] for ln in only.stdout.splitlines()]
    assert ops == ["reboot", "status"]
    future = run_xvmd_once(netns, ["audit", "--file", path, "--since", "2999-01-01"])
    assert future.rc == 0 and len(future.stdout.splitlines()) == 1  # header only
    recent = run_xvmd_once(netns, ["audit", "--file", path, "--since", "10m", "--json"])
    assert len(recent.stdout.splitlines()) == 3
    bad = run_xvmd_once(netns, ["audit", "--file", path, "--since", "yesterday-ish"])
    assert bad.rc == 2 and "--since" in bad.stderr
    missing = run_xvmd_once(netns, ["audit", "--file", str(tmp_path / "none.jsonl")])
    assert missing.rc == 2 and "cannot read" in missing.stderr


def test_sighup_without_cluster_conf_rereads_the_key(
    start_xvmd: XvmdFactory, netns: Netns, tmp_path: Path
) -> None:
    key = tmp_path / "rotating.key"
    key.write_bytes(os.urandom(4096))
    key.chmod(0o600)
    old = tmp_path / "old.key"
    old.write_bytes(key.read_bytes())
    d = start_xvmd(key=key)
    common = ["-p", str(d.port), "-t", "2", "-r", "10", "-o", "status", "-H", "vm-01"]
    assert fence_xvm(netns, "-k", str(old), *common).rc == 0
    key.write_bytes(os.urandom(4096))  # rotated on disk: not used until SIGHUP
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_for_log(f"SIGHUP: key {key} re-read")
    assert fence_xvm(netns, "-k", str(key), *common).rc == 0
    assert fence_xvm(netns, "-k", str(old), *common).rc == 1
    key.unlink()
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_for_log("still using the key loaded before")
    assert d.proc.poll() is None
