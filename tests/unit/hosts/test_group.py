"""CpgGroup on a real event loop, with libcpg replaced by FakeCpgCluster (tests/unit/hosts).

Nothing here waits on the wall clock: the group's ``sleep`` is ``Sleeps`` (records the delay,
returns at the next loop turn), ``until`` checks its condition between loop turns, and the
tests observe through the group's public surface, its callbacks, the fake and the log.
``time.sleep`` raises throughout: the event loop must never sleep.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.unit.hosts.fake_cpg import FakeCpgCluster
from xvmd.hosts.cpgbinding import (
    CpgAddressStruct,
    CpgLibrary,
    CpgModelV1Data,
    CpgName,
    CtypesCpg,
    cpg_name,
)
from xvmd.hosts.group import MAX_PAYLOAD, MAX_QUEUED_BYTES, CpgGroup, GroupView
from xvmd.quorum.corotypes import CS_ERR_BAD_HANDLE

GROUP = b"xvmd-test"


@pytest.fixture(autouse=True)
def no_blocking_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) would block the event loop")

    monkeypatch.setattr(time, "sleep", refuse)


@pytest.fixture
def cluster() -> Iterator[FakeCpgCluster]:
    fake = FakeCpgCluster()
    yield fake
    fake.close()


class Sleeps:
    """The group's ``sleep``: records each delay and returns at the next loop turn."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class Member:
    """One node's CpgGroup with what its callbacks were given."""

    def __init__(self, cluster: FakeCpgCluster, nodeid: int, name: bytes | str = GROUP) -> None:
        self.views: list[GroupView] = []
        self.messages: list[tuple[int, bytes]] = []
        self.sleeps = Sleeps()
        lib = cluster.library(nodeid)

        def library() -> CpgLibrary:
            return lib

        self.group = CpgGroup(name, self.on_message, self.views.append, library, sleep=self.sleeps)

    def on_message(self, nodeid: int, payload: bytes) -> None:
        self.messages.append((nodeid, payload))

    @property
    def members(self) -> tuple[int, ...] | None:
        view = self.group.view
        return view.members if view.connected else None


async def until(predicate: Callable[[], bool], turns: int = 20_000) -> None:
    """Let the loop run until ``predicate`` holds (checked between turns)."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"condition not reached in {turns} loop turns")


async def loop_turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


async def joined(*members: Member) -> None:
    """Start the members, one after the other, until all see all."""
    for m in members:
        await m.group.start()
    ids = tuple(sorted(m.group.local_nodeid or 0 for m in members))
    await until(lambda: all(m.members == ids for m in members))


def test_join_publishes_a_view_with_itself(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        m = Member(cluster, 1)
        await m.group.start()
        assert m.group.local_nodeid == 1
        assert not m.group.view.connected  # joined, not yet confirmed by corosync
        await until(lambda: m.group.view.connected)
        assert m.views == [GroupView(connected=True, members=(1,), seq=1)]
        assert m.group.view == m.views[-1]
        assert [p[0] for p in m.group.processes] == [1]
        assert m.group.reconnects == 0 and not m.group.reconnecting
        await m.group.stop()
        assert m.views[-1] == GroupView(connected=False, members=(), seq=2)

    run(scenario)


def test_two_groups_see_each_other_and_agree_on_the_order(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a, b = Member(cluster, 1), Member(cluster, 2)
        await joined(a, b)
        assert a.views[-1].members == (1, 2) and b.views[-1].members == (1, 2)
        assert [v.members for v in a.views] == [(1,), (1, 2)]
        assert [v.members for v in b.views] == [(1, 2)]  # its first view has both
        for i in range(30):
            a.group.send(f"a{i}".encode())
            b.group.send(f"b{i}".encode())
        await until(lambda: len(a.messages) == len(b.messages) == 60)
        assert a.messages == b.messages == cluster.delivered
        # each sender's messages in the order it sent them, its own delivered back to it
        assert [p for n, p in a.messages if n == 1] == [f"a{i}".encode() for i in range(30)]
        assert [p for n, p in a.messages if n == 2] == [f"b{i}".encode() for i in range(30)]
        assert a.group.sent == b.group.sent == 30
        await b.group.stop()
        await until(lambda: a.members == (1,))
        await a.group.stop()

    run(scenario)


def test_send_order_is_kept_across_many_messages(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a = Member(cluster, 1)
        await joined(a)
        payloads = [i.to_bytes(4, "big") for i in range(500)]
        assert all(a.group.send(p) for p in payloads)
        await until(lambda: len(a.messages) == 500)
        assert [p for _, p in a.messages] == payloads
        assert a.group.sent == 500 and a.group.dropped_sends == 0
        await a.group.stop()

    run(scenario)


def test_try_again_is_asked_again_later_without_sleeping(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a = Member(cluster, 1)
        cluster.busy["join"] = 2  # corosync still busy with our previous leave
        await a.group.start()
        await until(lambda: a.group.view.connected)
        assert a.sleeps.delays == pytest.approx([0.02, 0.04])
        assert cluster.count("finalize") == 2  # each busy attempt closed its handle
        cluster.busy["mcast"] = 3
        for p in (b"one", b"two", b"three"):
            a.group.send(p)
        await until(lambda: len(a.messages) == 3)
        assert [p for _, p in a.messages] == [b"one", b"two", b"three"]
        assert a.sleeps.delays[2:] == pytest.approx([0.02, 0.04, 0.06])
        assert a.group.sent == 3 and a.group.dropped_sends == 0
        assert a.group.view.connected and a.group.reconnects == 0
        await a.group.stop()

    run(scenario)


def test_busy_retries_keep_growing_but_stay_bounded(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a = Member(cluster, 1)
        await joined(a)
        cluster.busy["mcast"] = 40
        a.group.send(b"late")
        await until(lambda: len(a.messages) == 1)
        assert max(a.sleeps.delays) == pytest.approx(0.5)
        assert a.messages == [(1, b"late")]
        await a.group.stop()

    run(scenario)


def test_corosync_killed_then_restarted(
    cluster: FakeCpgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.hosts")

    async def scenario() -> None:
        a, b = Member(cluster, 1), Member(cluster, 2)
        await joined(a, b)
        b.group.send(b"queued-1")  # queued, not yet sent (the sender runs at the next turn)...
        b.group.send(b"queued-2")
        cluster.kill(2)
        await until(lambda: not b.group.view.connected)
        assert b.views[-1].members == ()
        assert b.group.reconnecting
        assert b.group.dropped_sends == 2  # ...and dropped with the connection
        assert not b.group.send(b"while-down") and b.group.dropped_sends == 3
        await until(lambda: a.members == (1,))  # the others see it leave
        await until(lambda: cluster.count("initialize", 2) >= 7)
        assert b.sleeps.delays[:6] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
        assert b.views[-1].connected is False  # one disconnected view, not one per retry
        assert sum(not v.connected for v in b.views) == 1
        cluster.restart(2)
        await until(lambda: a.members == b.members == (1, 2))
        assert b.group.reconnects == 1 and not b.group.reconnecting
        assert b.group.local_nodeid == 2
        b.group.send(b"back")
        await until(lambda: (2, b"back") in a.messages)
        assert (2, b"queued-1") not in a.messages
        # the backoff starts over after a successful connection
        before = len(b.sleeps.delays)
        cluster.kill(2)
        await until(lambda: len(b.sleeps.delays) >= before + 2)
        assert b.sleeps.delays[before : before + 2] == pytest.approx([0.2, 0.4])
        cluster.restart(2)
        await until(lambda: b.members == (1, 2))
        assert b.group.reconnects == 2
        await a.group.stop()
        await b.group.stop()

    run(scenario)
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lost) == 2  # once per loss, not per retry
    assert all(m.startswith("lost the CPG group (") for m in lost)
    assert all(m.endswith(": CS_ERR_LIBRARY); reconnecting") for m in lost)


def test_start_without_corosync_keeps_retrying(cluster: FakeCpgCluster) -> None:
    cluster.down.add(1)

    async def scenario() -> None:
        a = Member(cluster, 1)
        await a.group.start()  # never raises
        assert a.views == [GroupView(connected=False, members=(), seq=1)]
        assert a.group.reconnecting and a.group.local_nodeid is None
        await until(lambda: cluster.count("initialize") >= 4)
        assert len(a.views) == 1  # not republished per retry
        cluster.restart(1)
        await until(lambda: a.group.view.connected)
        assert a.views[-1] == GroupView(connected=True, members=(1,), seq=2)
        assert a.group.reconnects == 0  # the first connection made
        await a.group.stop()

    run(scenario)


def test_dispatch_errors_reconnect(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a = Member(cluster, 1)
        await joined(a)
        cluster.fail["dispatch"] = CS_ERR_BAD_HANDLE
        a.group.send(b"x")  # delivery makes the fd readable
        await until(lambda: not a.group.view.connected)
        del cluster.fail["dispatch"]
        await until(lambda: a.group.view.connected)
        assert a.group.reconnects == 1
        assert [v.connected for v in a.views] == [True, False, True]
        await a.group.stop()

    run(scenario)


def test_oversized_send_is_refused(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a = Member(cluster, 1)
        await joined(a)
        with pytest.raises(ValueError, match=f"at most {MAX_PAYLOAD} bytes"):
            a.group.send(b"x" * (MAX_PAYLOAD + 1))
        assert a.group.send(b"y" * MAX_PAYLOAD)
        assert a.group.send(b"")
        await until(lambda: len(a.messages) == 2)
        assert [len(p) for _, p in a.messages] == [MAX_PAYLOAD, 0]
        assert a.group.dropped_sends == 0
        await a.group.stop()

    run(scenario)


def test_the_queue_for_a_busy_corosync_is_bounded(
    cluster: FakeCpgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "xvmd.hosts")

    async def scenario() -> None:
        a = Member(cluster, 1)
        await joined(a)
        cluster.busy["mcast"] = 1_000_000
        big = b"z" * MAX_PAYLOAD
        fits = MAX_QUEUED_BYTES // MAX_PAYLOAD
        assert all(a.group.send(big) for _ in range(fits))
        assert not a.group.send(big) and not a.group.send(b"small")
        assert a.group.dropped_sends == 2
        cluster.busy.clear()
        await until(lambda: len(a.messages) == fits)
        assert a.group.send(b"room again")
        await until(lambda: len(a.messages) == fits + 1)
        await a.group.stop()

    run(scenario)
    assert len(caplog.records) == 1 and "dropping" in caplog.records[0].getMessage()


def test_sends_before_the_group_is_joined_are_dropped(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a = Member(cluster, 1)
        assert not a.group.send(b"not started")
        await a.group.start()
        assert not a.group.send(b"no view yet")
        await until(lambda: a.group.view.connected)
        assert a.group.send(b"now")
        await until(lambda: len(a.messages) == 1)
        assert a.group.dropped_sends == 2 and a.group.sent == 1
        await a.group.stop()
        assert not a.group.send(b"stopped")
        assert a.group.dropped_sends == 3

    run(scenario)


def test_stop_is_idempotent_and_ends_the_retries(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a, b = Member(cluster, 1), Member(cluster, 2)
        await b.group.stop()  # never started: nothing to do
        await joined(a, b)
        await b.group.stop()
        await b.group.stop()
        assert [v.connected for v in b.views] == [True, False]
        assert cluster.count("leave", 2) == 1 and cluster.count("finalize", 2) == 1
        await until(lambda: a.members == (1,))
        assert cluster.members(GROUP) == [(1, a.group.processes[0][1])]
        # stopped while corosync is down: no reconnect attempts afterwards
        cluster.kill(1)
        await until(lambda: cluster.count("initialize", 1) >= 3)
        await a.group.stop()
        assert not a.group.reconnecting
        attempts = cluster.count("initialize", 1)
        await loop_turns(200)
        assert cluster.count("initialize", 1) == attempts
        assert cluster.conns == {}
        # and it can start again
        cluster.restart(1)
        await a.group.start()
        await until(lambda: a.members == (1,))
        await a.group.stop()

    run(scenario)


def test_raising_callbacks_do_not_break_the_group(
    cluster: FakeCpgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "xvmd.hosts")
    got: list[bytes] = []
    views: list[GroupView] = []

    def on_message(nodeid: int, payload: bytes) -> None:
        got.append(payload)
        raise RuntimeError("message handler bug")

    def on_membership(view: GroupView) -> None:
        views.append(view)
        raise RuntimeError("view handler bug")

    async def scenario() -> None:
        lib = cluster.library(1)
        group = CpgGroup(GROUP, on_message, on_membership, lambda: lib, sleep=Sleeps())
        await group.start()
        await until(lambda: group.view.connected)
        for p in (b"1", b"2", b"3"):
            group.send(p)
        await until(lambda: len(got) == 3)
        assert got == [b"1", b"2", b"3"]
        assert group.view.connected and group.reconnects == 0
        other = Member(cluster, 2)
        await other.group.start()
        await until(lambda: group.view.members == (1, 2))
        await group.stop()
        await other.group.stop()

    run(scenario)
    assert len(views) == 3  # joined, the other joined, stopped
    errors = [r.getMessage() for r in caplog.records]
    assert errors.count("error in a CPG group callback (on_message)") == 3
    assert errors.count("error in a CPG group callback (on_membership)") == 3


def test_one_node_is_one_member_however_many_processes(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        old, new = Member(cluster, 1), Member(cluster, 1)
        await old.group.start()
        await until(lambda: old.members == (1,))
        await new.group.start()
        await until(lambda: new.members == (1,))
        await until(lambda: len(old.views) == 2)
        # a new view (the newcomer needs the state republished), the same node ids
        assert [v.members for v in old.views] == [(1,), (1,)]
        assert old.views[1].seq == 2
        assert len(old.group.processes) == 2
        assert {p[0] for p in old.group.processes} == {1}
        await old.group.stop()
        await until(lambda: len(new.group.processes) == 1)
        assert new.members == (1,)
        await new.group.stop()

    run(scenario)


def test_missing_library_is_reported_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "xvmd.hosts")
    views: list[GroupView] = []

    def library() -> CpgLibrary:
        return CtypesCpg("libcpg-not-here.so.99")

    async def scenario() -> None:
        group = CpgGroup("g", lambda n, p: None, views.append, library)
        await group.start()
        assert views == [GroupView(connected=False, members=(), seq=1)]
        assert not group.reconnecting
        await group.stop()

    run(scenario)
    assert "libcpg-not-here.so.99" in caplog.records[0].getMessage()


@pytest.mark.parametrize("name", [b"", b"x" * 128, "é" * 64])
def test_group_names_are_bounded(name: bytes | str) -> None:
    with pytest.raises(ValueError, match="1 to 127 bytes"):
        CpgGroup(name, lambda n, p: None, lambda v: None)


def test_group_names_up_to_127_bytes(cluster: FakeCpgCluster) -> None:
    async def scenario() -> None:
        a = Member(cluster, 1, "é" * 63 + "x")  # 127 bytes in UTF-8
        await joined(a)
        assert cluster.members("é".encode() * 63 + b"x") == list(a.group.processes)
        await a.group.stop()

    run(scenario)


def test_c_structures_match_cpg_h() -> None:
    assert ctypes.sizeof(CpgName) == 4 + 128
    assert ctypes.sizeof(CpgAddressStruct) == 12
    # enum model, three function pointers (8-byte aligned), unsigned flags, padded
    assert ctypes.sizeof(CpgModelV1Data) == 8 + 3 * 8 + 8
    name = cpg_name(b"abc")
    assert bytes(name)[:8] == (3).to_bytes(4, "little") + b"abc\0"
    full = cpg_name(b"n" * 128)  # corosync's limit; CpgGroup keeps a byte for the NUL
    assert bytes(full)[4:] == b"n" * 128
    with pytest.raises(ValueError):
        cpg_name(b"n" * 129)
