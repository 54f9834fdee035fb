"""``xvmd status`` against a live daemon's control socket (in process, on the test's loop), and
``xvmd audit`` over a trail written by AuditLog: what they print, and their exit codes.

The commands block (a socket read, a file read): they run in a thread while the daemon keeps
serving on the loop, as they would run in a process of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO
from tests.unit.fakes import QUORATE, FakeQuorum, Links, NotifySocket, serving, until
from xvmd import cli
from xvmd.backend.fake import FakeBackend
from xvmd.cli import audit as audit_cmd
from xvmd.core.policy import Policy
from xvmd.core.records import now_fields
from xvmd.daemon.audit import AuditLog
from xvmd.daemon.daemon import Daemon
from xvmd.daemon.settings import Settings
from xvmd.protocol.auth import Key
from xvmd.quorum import QuorumStatus

KEY = Key(os.urandom(64))
pytestmark = pytest.mark.usefixtures("notify")  # every test runs as under systemd


def xvmd(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def daemon(control: Path, quorum: FakeQuorum | None = None, **changes: Any) -> Daemon:
    s = dataclasses.replace(Settings(control=str(control)), **changes)
    backend = FakeBackend()
    return Daemon(s, Policy.unrestricted([KEY]), backend, quorum=quorum, links=Links())


def status_while_serving(
    d: Daemon, notify: NotifySocket, argvs: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> list[tuple[int, str, str]]:
    """``xvmd status ARGV`` for each of ``argvs``, one after another, while ``d`` serves."""

    async def scenario() -> list[tuple[int, str, str]]:
        async with serving(d, notify):
            await until(lambda: d.backend_up)  # the start-up check of the backend is done
            return [await asyncio.to_thread(xvmd, ["status", *a], capsys) for a in argvs]

    return asyncio.run(scenario())


# -- xvmd status -----------------------------------------------------------------------------------


def test_status_of_a_quorate_cluster_member(
    tmp_path: Path, notify: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = tmp_path / "ctl.sock"
    d = daemon(ctl, FakeQuorum(QUORATE))
    [(code, out, err), (jcode, jout, _)] = status_while_serving(
        d, notify, [["--control", str(ctl)], ["--control", str(ctl), "--json"]], capsys
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"xvmd {d.status()['version']} (pid {os.getpid()}), cluster mode")
    assert lines[1:4] == [
        "quorum: quorate",
        "  corosync cluster 'hosts', this node 1, ring 1.8; votes 2/2 expected, quorum 2",
        "  members: 1 (h1), 2 (h2)",
    ]
    assert "backend: fake (reachable)" in lines
    assert "answered: none; dropped: none; in flight: 0" in lines
    doc = json.loads(jout)
    assert jcode == 0
    assert doc["mode"] == "cluster" and doc["pid"] == os.getpid()
    assert doc["quorum"]["members"][0] == {"nodeid": 1, "name": "h1", "addresses": ["192.0.2.1"]}


def test_status_exits_1_while_not_quorate(
    tmp_path: Path, notify: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = tmp_path / "ctl.sock"
    lost = dataclasses.replace(QUORATE, quorate=False, reason="this partition lost quorum")
    d = daemon(ctl, FakeQuorum(lost))
    [(code, out, _err)] = status_while_serving(d, notify, [["--control", str(ctl)]], capsys)
    assert code == 1  # it answers, but would refuse power actions
    assert "quorum: NOT QUORATE -- this partition lost quorum" in out.splitlines()


def test_status_follows_the_quorum_the_daemon_sees_now(
    tmp_path: Path, notify: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = tmp_path / "ctl.sock"
    quorum = FakeQuorum(QUORATE)
    d = daemon(ctl, quorum)

    argv = ["status", "--control", str(ctl)]

    async def scenario() -> list[int]:
        async with serving(d, notify):
            codes = [(await asyncio.to_thread(xvmd, argv, capsys))[0]]
            # A fresh document per query: the quorum of now, nothing cached.
            quorum.status = QuorumStatus(False, False, "not connected to corosync (restarting?)")
            codes.append((await asyncio.to_thread(xvmd, argv, capsys))[0])
            return codes

    assert asyncio.run(scenario()) == [0, 1]


def test_status_finds_a_running_instance_without_options(
    run_dir: Path, notify: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    d = daemon(run_dir / "xvmd-alpha.sock", instance="alpha")
    results = status_while_serving(d, notify, [[], ["--instance", "alpha"], ["-p", "1229"]], capsys)
    (found, out, _), (named, named_out, _), (other, _, other_err) = results
    assert (found, named) == (0, 0)  # --local: may fence
    assert out == named_out
    assert out.startswith(f"xvmd {d.status()['version']} (pid {os.getpid()}), instance alpha,")
    assert "quorum: not checked (--local)" in out.splitlines()
    assert other == 2  # the default daemon's socket is not there
    assert f"no control socket at {run_dir / 'xvmd.sock'}" in other_err


def test_status_without_a_daemon_exits_2(
    tmp_path: Path, run_dir: Path, notify: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = tmp_path / "ctl.sock"
    code, out, err = xvmd(["status", "--control", str(ctl)], capsys)
    assert (code, out) == (2, "")
    assert err == f"xvmd status: xvmd is not running (no control socket at {ctl})\n"
    # A daemon that served and stopped leaves its socket file behind: still "not running".
    status_while_serving(daemon(ctl), notify, [], capsys)
    assert ctl.is_socket()
    code, _out, err = xvmd(["status", "--control", str(ctl)], capsys)
    assert code == 2 and f"stale control socket {ctl}" in err
    code, _out, err = xvmd(["status"], capsys)
    assert code == 2 and f"no control socket in {run_dir} answers" in err


# -- xvmd audit ------------------------------------------------------------------------------------

HOUR = 3600.0


def record(op: str, target: str, result: str, ago: float = 0.0, **more: Any) -> dict[str, Any]:
    """One record as the daemon writes it (xvmd/core/records.py), ``ago`` seconds old."""
    rec = {
        **now_fields(),
        "requester": "192.0.2.7",
        "device": "xvm-host1",
        "op": op,
        "target": target,
        "domain": None,
        "seqno": 4711,
        "quorum": "quorate",
        "result": result,
        "detail": "done",
        "ms": 12.5,
        **more,
    }
    if ago:
        epoch = time.time() - ago
        rec["epoch"] = round(epoch, 3)
        rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))
    return rec


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """A trail in time order, written by AuditLog as the daemon writes it."""
    path = tmp_path / "state" / "audit.jsonl"
    audit = AuditLog(str(path))
    try:
        audit.write(record("off", "old-vm", "success", ago=3 * HOUR), durable=True)
        audit.write(record("reboot", "n1", "success", domain="vm-15"), durable=True)
        audit.write(record("off", "nosuch", "failed", detail="no such domain"), durable=True)
        audit.write(record("status", "VM-15", "success"), durable=False)
    finally:
        audit.close()
    return path


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()[1:]]


def test_audit_shows_the_whole_trail_as_a_table(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = xvmd(["audit", "--file", str(trail)], capsys)
    assert (code, err) == (0, "")
    header = out.splitlines()[0].split()
    assert header == [c.upper() for c in audit_cmd.COLUMNS]
    assert header[:6] == ["TIME", "REQUESTER", "DEVICE", "OP", "TARGET", "RESULT"]
    # time is two columns (date and clock); a mapped target shows its domain.
    assert [r[2:6] for r in rows(out)] == [
        ["192.0.2.7", "xvm-host1", "off", "old-vm"],
        ["192.0.2.7", "xvm-host1", "reboot", "n1"],
        ["192.0.2.7", "xvm-host1", "off", "nosuch"],
        ["192.0.2.7", "xvm-host1", "status", "VM-15"],
    ]
    assert "n1 -> vm-15" in out.splitlines()[2]


def test_audit_filters_by_target_and_time_as_json(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The target matches the request's target or the domain it mapped to, in any case.
    code, out, _err = xvmd(["audit", "--file", str(trail), "--target", "vm-15", "--json"], capsys)
    got = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(r["op"], r["target"], r["domain"]) for r in got] == [
        ("reboot", "n1", "vm-15"),
        ("status", "VM-15", None),
    ]
    assert all(set(r) >= {"time", "epoch", "seqno", "quorum", "ms"} for r in got)
    code, out, _err = xvmd(["audit", "--file", str(trail), "--since", "1h", "--json"], capsys)
    assert [json.loads(line)["target"] for line in out.splitlines()] == ["n1", "nosuch", "VM-15"]
    code, out, _err = xvmd(["audit", "--file", str(trail), "--since", "2999-01-01"], capsys)
    assert code == 0 and len(out.splitlines()) == 1  # the header only


def test_audit_exit_codes_for_a_bad_since_and_an_unreadable_trail(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = xvmd(["audit", "--file", str(trail), "--since", "yesterday-ish"], capsys)
    assert (code, out) == (2, "") and "--since 'yesterday-ish'" in err
    missing = tmp_path / "none.jsonl"
    code, out, err = xvmd(["audit", "--file", str(missing)], capsys)
    assert (code, out) == (2, "")
    assert err == f"xvmd audit: cannot read {missing}: No such file or directory\n"
    code, _out, err = xvmd(["audit", "--file", str(tmp_path)], capsys)
    assert code == 2 and f"cannot read {tmp_path}: Is a directory" in err


def test_audit_of_a_trail_it_may_not_read_exits_2(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.chmod(0)
    if os.geteuid() != 0:
        code, _out, err = xvmd(["audit", "--file", str(trail)], capsys)
    else:  # root reads a file whatever its mode: ask as nobody instead
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        argv += [sys.executable, "-m", "xvmd", "audit", "--file", str(trail)]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
        code, err = done.returncode, done.stderr
    assert code == 2 and f"cannot read {trail}: Permission denied" in err


def test_audit_reads_the_trail_a_daemon_is_still_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    try:
        audit.write(record("off", "vm-1", "success"), durable=True)
        code, out, _err = xvmd(["audit", "--file", str(path), "--json"], capsys)
        audit.write(record("on", "vm-1", "success"), durable=True)
        code2, out2, _err = xvmd(["audit", "--file", str(path), "--json"], capsys)
    finally:
        audit.close()
    assert (code, code2) == (0, 0)
    assert [json.loads(x)["op"] for x in out.splitlines()] == ["off"]
    assert [json.loads(x)["op"] for x in out2.splitlines()] == ["off", "on"]


# -- xvmd confirm-host-down ------------------------------------------------------------------------


def test_confirm_host_down_is_refused_by_a_daemon_of_one_host_and_audited(
    tmp_path: Path, notify: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl, trail = tmp_path / "ctl.sock", tmp_path / "audit.jsonl"
    d = daemon(ctl, audit=str(trail))

    async def scenario() -> tuple[int, str, str]:
        async with serving(d, notify):
            argv = ["confirm-host-down", "hv2", "--control", str(ctl)]
            return await asyncio.to_thread(xvmd, argv, capsys)

    code, out, err = asyncio.run(scenario())
    assert (code, out) == (1, "")
    assert "refused: this daemon answers for its own host only" in err
    [record] = [json.loads(line) for line in trail.read_text().splitlines()]
    assert (record["op"], record["target"], record["result"]) == (
        "confirm-host-down",
        "hv2",
        "refused",
    )
    assert record["requester"].startswith("root (uid 0") or "uid" in record["requester"]


def test_confirm_host_down_without_a_daemon_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = xvmd(
        ["confirm-host-down", "hv2", "--control", str(tmp_path / "none")], capsys
    )
    assert code == 2 and "xvmd is not running" in err
