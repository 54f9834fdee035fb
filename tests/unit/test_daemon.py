"""The Daemon's composition, root-free: a unicast UDP socket on 127.0.0.1 stands in for the
multicast listener (the daemon serves unicast to its port too), the control socket and the
audit trail live under tmp_path, the hypervisor is the fake backend, quorum a fake source, and
link events come from the test instead of netlink.

What it proves: the daemon serves and reports what it served; a stop drains the requests in
flight while quorum is still followed, and only then lets go of quorum, the worker pool, the
hypervisor and the audit trail, in that order; a start-up error runs the same clean-up and
leaves no signal handler behind; SIGHUP swaps the policy; systemd hears what it should.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

import ccs
import ccs.source
from tests.support import pyclient
from tests.unit.fakes import (
    LISTENER_GROUP,
    FakeQuorum,
    Links,
    NotifySocket,
    ask,
    assert_no_signal_handlers,
    deliver,
    either,
    handlers,
    loopback_listener,
    serving,
    until,
)
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.cli import status as status_cmd
from xvmd.core.executor import BackendRunner
from xvmd.core.policy import Policy
from xvmd.core.service import FenceService
from xvmd.daemon import control
from xvmd.daemon import daemon as daemon_module
from xvmd.daemon.audit import AuditLog
from xvmd.daemon.daemon import Daemon, StartupError
from xvmd.daemon.settings import Settings
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType, Op, Result

KEY = Key(os.urandom(64))
pytestmark = pytest.mark.usefixtures("notify")  # every test runs as under systemd
UUID = "00000000-0000-4000-8000-000000000001"
GROUP = LISTENER_GROUP
# Every key of the status document; `xvmd status` renders each of them.
STATUS_KEYS = {
    "version",
    "pid",
    "started",
    "instance",
    "mode",
    "listeners",
    "backend",
    "quorum",
    "config",
    "reload",
    "audit",
    "counters",
    "hosts",
    "active_sessions",
    "recent",
}
ORDERED_STOP = ["drain.begin", "drain.end", "quorum.stop", "pool.shutdown", "backend.close"]


# -- stand-ins -------------------------------------------------------------------------------------


class TracedBackend(FakeBackend):
    """The fake hypervisor with one running domain; power actions and close go to ``trace``."""

    def __init__(self, trace: list[str]) -> None:
        super().__init__([DomainInfo("vm", UUID, DomainState.RUNNING)])
        self.trace = trace

    def destroy(self, uuid: str) -> None:
        super().destroy(uuid)
        self.trace.append("backend.destroy")

    def close(self) -> None:
        self.trace.append("backend.close")


class Probe:
    """The steps of a stop, in the order they happened."""

    def __init__(self) -> None:
        self.trace: list[str] = []
        self.draining = asyncio.Event()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    """The daemon's runner, service and audit log, subclassed to log their part of a stop."""
    p = Probe()
    trace = p.trace

    class Runner(BackendRunner):
        def shutdown(self) -> None:
            trace.append("pool.shutdown")
            super().shutdown()

    class Service(FenceService):
        async def drain(self, timeout: float) -> int:
            trace.append("drain.begin")
            p.draining.set()
            left = await super().drain(timeout)
            trace.append("drain.end")
            return left

    class Audit(AuditLog):
        def close(self) -> None:
            trace.append("audit.close")
            super().close()

    monkeypatch.setattr(daemon_module, "BackendRunner", Runner)
    monkeypatch.setattr(daemon_module, "FenceService", Service)
    monkeypatch.setattr(daemon_module, "AuditLog", Audit)
    return p


# -- helpers ---------------------------------------------------------------------------------------


def settings(tmp_path: Path, **changes: Any) -> Settings:
    base = Settings(control=str(tmp_path / "ctl.sock"), audit=str(tmp_path / "audit.jsonl"))
    return dataclasses.replace(base, workers=2, **changes)


def audit_records(s: Settings) -> list[tuple[str, str, str]]:
    assert s.audit is not None
    lines = Path(s.audit).read_text().splitlines()
    return [(r["op"], r["result"], r["quorum"]) for r in map(json.loads, lines)]


def local_daemon(tmp_path: Path, trace: list[str] | None = None, **changes: Any) -> Daemon:
    backend = TracedBackend(trace if trace is not None else [])
    return Daemon(settings(tmp_path, **changes), Policy.unrestricted([KEY]), backend, links=Links())


# -- serving and the status document ---------------------------------------------------------------


def test_serves_a_request_and_reports_it_in_the_status_document(
    tmp_path: Path, notify: NotifySocket
) -> None:
    daemon = local_daemon(tmp_path)

    async def scenario() -> tuple[pyclient.Reply, dict[str, Any], int]:
        async with serving(daemon, notify) as dest:
            reply = await ask(dest, Op.STATUS, "vm", KEY)
            await until(lambda: daemon.backend_up)  # the start-up check ran
            assert daemon.settings.control is not None
            doc = await asyncio.to_thread(control.query, daemon.settings.control)
        return reply, doc, dest[1]

    reply, doc, port = asyncio.run(scenario())
    assert reply.result == Result.SUCCESS
    assert set(doc) == STATUS_KEYS
    assert (doc["mode"], doc["quorum"], doc["config"], doc["reload"]) == ("local", None, None, None)
    assert doc["listeners"] == [f"{GROUP} port {port}"]
    assert doc["backend"] == {"description": "fake", "reachable": True}
    latency = doc["counters"].pop("latency")
    assert doc["counters"] == {
        "answered": {"success": 1},
        "dropped": {},
        "by_op": {"status": {"success": 1}},
    }
    assert sum(latency["counts"]) == 1 and 0 < latency["sum"] < 2.0
    assert doc["audit"]["written"] == 1 and doc["active_sessions"] == 0
    assert [(r["op"], r["target"], r["result"]) for r in doc["recent"]] == [
        ("status", "vm", "success")
    ]
    lines = status_lines(doc)
    assert lines[0].startswith(f"xvmd {doc['version']} (pid {os.getpid()}), local mode, up ")
    assert "quorum: not checked (--local)" in lines
    assert "backend: fake (reachable)" in lines
    assert f"listening: {GROUP} port {port}" in lines
    assert f"audit: {tmp_path / 'audit.jsonl'} (1 records)" in lines
    assert "answered: success 1; dropped: none; in flight: 0" in lines
    assert " 127.0.0.1 status vm -> success: " in lines[-1]


def status_lines(doc: dict[str, Any]) -> list[str]:
    out = io.StringIO()
    status_cmd.render(doc, out)
    return out.getvalue().splitlines()


# -- the ordered stop ------------------------------------------------------------------------------


class PausedClient:
    """A client that authenticates the daemon, then holds its own answer until ``go``."""

    def __init__(self) -> None:
        self.paused = asyncio.Event()
        self.go = asyncio.Event()
        self.verified = False
        self.result: int | None = None

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c1 = os.urandom(CHALLENGE_SIZE)
        writer.write(c1)
        self.verified = await reader.readexactly(CHALLENGE_SIZE) == KEY.digest(HashType.SHA256, c1)
        c2 = await reader.readexactly(CHALLENGE_SIZE)
        self.paused.set()
        await self.go.wait()
        writer.write(KEY.digest(HashType.SHA256, c2))
        answer = await reader.read(1)
        self.result = answer[0] if answer else None
        writer.close()


def test_sigterm_drains_in_flight_work_before_letting_go_of_quorum(
    tmp_path: Path, notify: NotifySocket, probe: Probe
) -> None:
    quorum = FakeQuorum(trace=probe.trace)
    backend = TracedBackend(probe.trace)
    s = settings(tmp_path)
    daemon = Daemon(s, Policy.unrestricted([KEY]), backend, quorum=quorum, links=Links())
    client = PausedClient()

    async def scenario() -> None:
        server = await asyncio.start_server(client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with serving(daemon, notify) as dest:
            pyclient.send_datagram(pyclient.build(Op.OFF, "vm", KEY, port=port), dest)
            await asyncio.wait_for(client.paused.wait(), 2)  # mid-handshake
            deliver(signal.SIGTERM)
            # The daemon reaches its drain -- or, were it wrong, lets go of quorum first.
            await either(probe.draining.wait(), quorum.stopped.wait())
            client.go.set()
        server.close()

    asyncio.run(scenario())
    assert client.verified
    assert client.result == Result.SUCCESS  # carried out and answered during the stop
    assert probe.trace == [
        "quorum.start",
        "drain.begin",
        "backend.destroy",
        *ORDERED_STOP[1:],
        "audit.close",
    ]
    assert audit_records(s) == [("off", "success", "quorate")]
    # What systemd heard after READY: the stop, once (SIGTERM and the test's stop are one).
    assert notify.take() == {"STOPPING": "1", "STATUS": "stopping: draining requests in flight"}


# -- start-up errors -------------------------------------------------------------------------------


async def failed_start(daemon: Daemon) -> tuple[BaseException, socket.socket]:
    lst, sock = loopback_listener()
    before = handlers()
    try:
        await daemon.run([(lst, sock)])
    except Exception as exc:
        assert_no_signal_handlers(before)
        return exc, sock
    raise AssertionError("the daemon started")


def start_with(tmp_path: Path, probe: Probe, **changes: Any) -> tuple[BaseException, Daemon]:
    quorum = FakeQuorum(trace=probe.trace)
    backend = TracedBackend(probe.trace)
    s = settings(tmp_path, **changes)
    daemon = Daemon(s, Policy.unrestricted([KEY]), backend, quorum=quorum, links=Links())
    exc, sock = asyncio.run(failed_start(daemon))
    assert sock.fileno() == -1  # the listener handed over is closed, never leaked
    return exc, daemon


def test_an_unusable_audit_path_stops_the_start_before_anything_runs(
    tmp_path: Path, probe: Probe
) -> None:
    (tmp_path / "file").write_text("")
    exc, _ = start_with(tmp_path, probe, audit=str(tmp_path / "file" / "audit.jsonl"))
    assert isinstance(exc, StartupError) and "audit file" in str(exc)
    # Nothing was started, yet everything made so far is let go, in the usual order.
    assert probe.trace == ["quorum.stop", "pool.shutdown", "backend.close"]


def test_a_control_path_that_is_no_socket_runs_the_whole_ordered_stop(
    tmp_path: Path, probe: Probe
) -> None:
    taken = tmp_path / "ctl.sock"
    taken.write_text("someone's file\n")
    exc, _ = start_with(tmp_path, probe)
    assert isinstance(exc, StartupError) and "not a socket" in str(exc)
    assert taken.read_text() == "someone's file\n"
    assert probe.trace == ["quorum.start", *ORDERED_STOP, "audit.close"]


def test_a_taken_tcp_port_runs_the_whole_ordered_stop(tmp_path: Path, probe: Probe) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        exc, _ = start_with(tmp_path, probe, tcp=("127.0.0.1", port))
    assert isinstance(exc, StartupError)
    assert str(exc) == (
        f"TCP 127.0.0.1 port {port}: address already in use "
        "(is fence_virtd or another xvmd running?)"
    )
    assert probe.trace == ["quorum.start", *ORDERED_STOP, "audit.close"]


def test_a_backend_that_fails_its_first_check_runs_the_same_clean_up(
    tmp_path: Path, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> bool:
        raise RuntimeError("the hypervisor library fell over")

    monkeypatch.setattr(TracedBackend, "check_connection", lambda self: broken())
    exc, daemon = start_with(tmp_path, probe)
    assert isinstance(exc, RuntimeError) and "fell over" in str(exc)
    assert probe.trace == ["quorum.start", *ORDERED_STOP, "audit.close"]
    assert daemon.settings.control is not None
    with pytest.raises(control.NotRunning):
        control.query(daemon.settings.control)  # the control socket was closed too


def test_an_unreachable_backend_is_reported_and_requests_fail(
    tmp_path: Path, notify: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = local_daemon(tmp_path)
    assert isinstance(daemon.backend, FakeBackend)
    daemon.backend.available = False

    async def scenario() -> tuple[pyclient.Reply, dict[str, Any]]:
        async with serving(daemon, notify) as dest:
            reply = await ask(dest, Op.OFF, "vm", KEY)
            assert daemon.settings.control is not None
            return reply, await asyncio.to_thread(control.query, daemon.settings.control)

    reply, doc = asyncio.run(scenario())
    assert reply.result == Result.FAIL
    assert doc["backend"] == {"description": "fake", "reachable": False}
    assert "backend: fake (UNREACHABLE)" in status_lines(doc)
    assert "cannot reach fake yet; requests fail until it answers" in caplog.text


# -- reloads ---------------------------------------------------------------------------------------


def test_sighup_without_cluster_conf_rereads_the_key(tmp_path: Path, notify: NotifySocket) -> None:
    rotated = Key(os.urandom(64))
    key_file = tmp_path / "fence.key"
    key_file.write_bytes(rotated.data)
    key_file.chmod(0o600)
    daemon = local_daemon(tmp_path, key_file=str(key_file))

    async def scenario() -> tuple[int | None, int | None, dict[str, Any]]:
        async with serving(daemon, notify) as dest:
            old = (await ask(dest, Op.STATUS, "vm", KEY)).result
            deliver(signal.SIGHUP)
            await notify.next("STATUS", "key re-read")
            new = (await ask(dest, Op.STATUS, "vm", rotated)).result
            # The old key is refused before any callback: counted as a drop.
            pyclient.send_datagram(pyclient.build(Op.STATUS, "vm", KEY, port=9), dest)
            await until(lambda: daemon.status()["counters"]["dropped"])
            return old, new, daemon.status()["counters"]

    old, new, counters = asyncio.run(scenario())
    assert (old, new) == (Result.SUCCESS, Result.SUCCESS)
    assert counters["answered"] == {"success": 2}
    assert sum(counters["dropped"].values()) == 1
    reloading = [m for m in notify.seen if "RELOADING" in m]
    assert reloading and notify.seen.index(reloading[0]) < len(notify.seen) - 1


def loopback_nodes(names: Any) -> dict[str, tuple[str, ...]]:
    """The resolver: every cluster node is this host (no DNS in unit tests)."""
    return {n: ("127.0.0.1",) for n in names}


def write_conf(conf: Path, version: int, vm: str, key: Path) -> None:
    conf.write_text(
        f'<cluster name="c" config_version="{version}"><clusternodes>'
        '<clusternode name="n1" nodeid="1"><fence><method name="1">'
        f'<device name="xvm" port="{vm}"/></method></fence></clusternode></clusternodes>'
        f'<fencedevices><fencedevice name="xvm" agent="fence_xvm" key_file="{key}"/>'
        "</fencedevices></cluster>"
    )


def test_sighup_reloads_cluster_conf_and_swaps_the_policy(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ccs.source, "resolve", loopback_nodes)
    key_file, conf = tmp_path / "host.key", tmp_path / "cluster.conf"
    key_file.write_bytes(os.urandom(256))
    key_file.chmod(0o600)
    write_conf(conf, 1, "vm", key_file)
    snap = ccs.load(str(conf), None, loopback_nodes).snapshot
    assert snap is not None
    # On disk before the start, so no file event sees it: only SIGHUP reads it.
    write_conf(conf, 2, "other-vm", key_file)
    policy = Policy.from_snapshot(snap)
    key = policy.keys[0]
    s = settings(tmp_path, config=str(conf))
    daemon = Daemon(s, policy, TracedBackend([]), snapshot=snap, links=Links())

    async def scenario() -> tuple[int | None, int | None, dict[str, Any]]:
        async with serving(daemon, notify) as dest:
            before = (await ask(dest, Op.STATUS, "n1", key)).result  # n1 -> vm: running
            deliver(signal.SIGHUP)
            await notify.next("STATUS", "config_version 2")
            after = (await ask(dest, Op.STATUS, "n1", key)).result  # n1 -> other-vm: none
            return before, after, daemon.status()

    before, after, doc = asyncio.run(scenario())
    assert (before, after) == (Result.SUCCESS, Result.OFF)
    assert (doc["config"]["config_version"], doc["config"]["reloads"]) == (2, 1)
    assert doc["reload"]["reloads"] == 1 and doc["reload"]["machinery"] == "ok"
    assert {"RELOADING"} <= set().union(*notify.seen)


# -- systemd's watchdog and network interfaces -----------------------------------------------------


def test_the_watchdog_is_pinged_while_serving(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    daemon = local_daemon(tmp_path)

    async def scenario() -> None:
        async with serving(daemon, notify):
            for _ in range(2):  # pinged again and again, not once
                assert (await notify.next("WATCHDOG", timeout=2.0))["WATCHDOG"] == "1"

    asyncio.run(scenario())


def test_link_events_of_the_named_interface_are_followed(
    tmp_path: Path, notify: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xvmd")
    links = Links()
    lo = socket.if_nametoindex("lo")
    s = settings(tmp_path, interface="lo")
    daemon = Daemon(s, Policy.unrestricted([KEY]), TracedBackend([]), links=links)

    async def event(name: str, exists: bool, up: bool, logged: str) -> None:
        assert links.on_event is not None
        # From a thread, as the netlink watcher calls it.
        await asyncio.to_thread(links.on_event, name, lo, exists, up)
        await until(lambda: logged in caplog.text)

    async def scenario() -> None:
        async with serving(daemon, notify):
            assert links.running
            await asyncio.to_thread(links.on_event or print, "eth9", 9, False, False)
            await event("lo", True, False, "interface lo down: no multicast requests arrive")
            await event("lo", False, False, "interface lo removed")
            await event("lo", True, True, f"{GROUP} on lo")  # back: joined again (or said why)
        assert not links.running  # stopped with the daemon

    asyncio.run(scenario())
    assert "eth9" not in caplog.text  # another interface is none of its business
    assert (
        f"rejoined multicast group {GROUP} on lo (index {lo})" in caplog.text
        or f"cannot rejoin {GROUP} on lo" in caplog.text
    )
