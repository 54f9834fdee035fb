"""CorosyncQuorum on a real event loop, with the C layer replaced by FakeCorosync."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.unit.quorum.fake_corosync import FakeCorosync
from xvmd.quorum import Member, QuorumStatus
from xvmd.quorum.corosync import (
    CS_ERR_ACCESS,
    CS_ERR_LIBRARY,
    CS_ERR_NOT_EXIST,
    CS_ERR_TRY_AGAIN,
    QUORUM_FREE,
    REASON_LOST,
    REASON_NO_LIBRARIES,
    REASON_QUORUM_FREE,
    REASON_STOPPED,
    CmapValue,
    CorosyncLibrary,
    CorosyncQuorum,
    VoteInfo,
)


class Sleeps:
    """Records each reconnect delay and waits only a millisecond."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.001)


@pytest.fixture
def fake() -> Iterator[FakeCorosync]:
    lib = FakeCorosync()
    yield lib
    lib.close()


def make(fake: FakeCorosync) -> tuple[CorosyncQuorum, list[QuorumStatus], Sleeps]:
    sleeps = Sleeps()

    def library() -> CorosyncLibrary:
        return fake

    quorum = CorosyncQuorum(library, sleep=sleeps, clock=lambda: 42.0)
    seen: list[QuorumStatus] = []
    quorum.subscribe(seen.append)
    return quorum, seen, sleeps


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_start_publishes_quorum_and_membership(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, seen, _ = make(fake)
        await quorum.start()
        status = quorum.current()
        # the CURRENT notification is taken during start(): one status, already complete
        assert seen == [status]
        assert status.connected and status.quorate and status.quorum_set
        assert status.members == (
            Member(1, "node1", ("10.0.0.1",)),
            Member(2, "node2", ("10.0.0.2",)),
        )
        assert status.ring_id == (1, 8)
        assert (status.expected_votes, status.total_votes, status.quorum) == (3, 2, 2)
        assert status.cluster_name == "fake" and status.local_nodeid == 1
        assert status.changed_at == 42.0
        assert quorum.connects == 1
        assert fake.count("quorum_trackstart") == 1
        await quorum.stop()

    run(scenario)


def test_changes_are_published_and_logged(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "xvmd.quorum")

    async def scenario() -> None:
        quorum, seen, _ = make(fake)
        await quorum.start()
        fake.votes[0] = VoteInfo(node_id=1, expected_votes=3, total_votes=1, quorum=2)
        fake.change(quorate=False, view=(1,))
        await until(lambda: not quorum.current().quorate)
        status = quorum.current()
        assert status.connected and status.member_ids == (1,)
        assert "1 of 3 expected votes, 2 needed" in status.reason
        fake.change(quorate=True, view=(1, 2, 3))
        await until(lambda: quorum.current().quorate)
        assert quorum.current().member_ids == (1, 2, 3)
        assert quorum.current().members[2] == Member(3, "node3", ("10.0.0.3",))
        fake.change(quorate=True, view=(1, 3))
        await until(lambda: quorum.current().member_ids == (1, 3))
        assert len(seen) == 4
        await quorum.stop()

    run(scenario)
    assert len(messages(caplog, logging.WARNING)) == 1
    info = messages(caplog, logging.INFO)
    assert info[0].startswith("corosync cluster fake is quorate (2 members")
    assert info[1].startswith("corosync cluster fake is quorate (3 members")
    assert info[2].startswith("corosync cluster fake membership changed, quorate (2 members")
    assert info[3] == REASON_STOPPED


def test_notifications_in_one_dispatch_publish_once(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, seen, _ = make(fake)
        await quorum.start()
        fake.change(quorate=False, view=(1,))
        fake.change(quorate=True, view=(1, 2, 3), seq=99)
        await until(lambda: quorum.current().member_ids == (1, 2, 3))
        await asyncio.sleep(0.01)
        assert len(seen) == 2  # start, then the last of the two notifications only
        assert seen[-1].ring_id == (1, 99)
        await quorum.stop()

    run(scenario)


def test_crash_reconnects_with_backoff_and_logs_once(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")

    async def scenario() -> None:
        quorum, seen, sleeps = make(fake)
        await quorum.start()
        fake.crash()
        await until(lambda: not quorum.current().connected)
        down = quorum.current()
        assert (down.quorate, down.reason, down.members) == (False, REASON_LOST, ())
        assert down.cluster_name == "fake"  # still says which cluster it is about
        assert fake.count("quorum_finalize") == 1
        assert fake.conns == {}  # the old connection is closed (its reader removed first)
        await until(lambda: fake.count("quorum_initialize") >= 8)
        assert sleeps.delays[:7] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
        fake.restart()
        await until(lambda: quorum.current().quorate)
        assert quorum.connects == 2
        # one status for the loss, none per failed retry
        assert [s.connected for s in seen] == [True, False, True]
        # the backoff starts over after a successful connection
        before = len(sleeps.delays)
        fake.crash()
        await until(lambda: not quorum.current().connected)
        await until(lambda: len(sleeps.delays) >= before + 2)
        assert sleeps.delays[before : before + 2] == pytest.approx([0.2, 0.4])
        fake.restart()
        await until(lambda: quorum.current().quorate)
        await quorum.stop()

    run(scenario)
    warnings = messages(caplog, logging.WARNING)
    assert warnings == [f"{REASON_LOST} (fencing refused meanwhile)"] * 2
    assert len([m for m in messages(caplog, logging.INFO) if "is quorate" in m]) == 3


def test_start_without_corosync_keeps_retrying(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")
    fake.running = False

    async def scenario() -> None:
        quorum, seen, _ = make(fake)
        await quorum.start()  # never raises
        status = quorum.current()
        assert not status.connected and not status.quorate
        assert status.reason.startswith("corosync is not running (cannot connect")
        await until(lambda: fake.count("quorum_initialize") >= 4)
        assert len(seen) == 1
        fake.restart()
        await until(lambda: quorum.current().quorate)
        await quorum.stop()

    run(scenario)
    assert len(messages(caplog, logging.WARNING)) == 1


def test_quorum_free_is_connected_but_refused(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")
    fake.quorum_type = QUORUM_FREE

    async def scenario() -> None:
        quorum, _, _ = make(fake)
        await quorum.start()
        status = quorum.current()
        assert status.connected and not status.quorate and not status.quorum_set
        assert status.reason == REASON_QUORUM_FREE
        fake.change(quorate=True, view=(1, 2, 3))  # even if something were notified
        await until(lambda: quorum.current().member_ids == (1, 2, 3))
        assert not quorum.current().quorate
        await quorum.stop()

    run(scenario)
    assert messages(caplog, logging.ERROR) == [REASON_QUORUM_FREE]


def test_missing_libraries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")

    def library() -> CorosyncLibrary:
        raise OSError("libquorum.so.5: cannot open shared object file")

    async def scenario() -> None:
        quorum = CorosyncQuorum(library)
        await quorum.start()
        status = quorum.current()
        assert (status.connected, status.quorate) == (False, False)
        assert status.reason == REASON_NO_LIBRARIES
        assert quorum._reconnect_task is None
        await quorum.stop()

    run(scenario)
    assert messages(caplog, logging.ERROR) == [f"{REASON_NO_LIBRARIES}: fencing refused"]


def test_real_loader_without_libraries_reports_them_missing() -> None:
    from xvmd.quorum import corosync as cs

    def library() -> CorosyncLibrary:
        return cs.CtypesCorosync({**cs.SONAMES, "cmap": "libcmap-not-here.so.99"})

    async def scenario() -> None:
        quorum = CorosyncQuorum(library)
        await quorum.start()
        assert quorum.current().reason == REASON_NO_LIBRARIES

    run(scenario)


def test_helper_failures_do_not_break_quorum_tracking(fake: FakeCorosync) -> None:
    fake.fail = {
        "votequorum_initialize": CS_ERR_ACCESS,
        "cmap_get_prefix": CS_ERR_LIBRARY,
        "cfg_get_node_addrs": CS_ERR_NOT_EXIST,
    }

    async def scenario() -> None:
        quorum, _, _ = make(fake)
        await quorum.start()
        status = quorum.current()
        assert status.quorate and status.member_ids == (1, 2)
        assert status.members[0] == Member(1)  # no names, no addresses
        assert status.expected_votes is None and status.cluster_name is None
        fake.fail = {}
        fake.change(quorate=True, view=(1, 2, 3))
        await until(lambda: quorum.current().member_ids == (1, 2, 3))
        status = quorum.current()
        # helpers reopened (votequorum, cmap) or kept (cfg) and answering again
        assert status.members[0] == Member(1, "node1", ("10.0.0.1",))
        assert status.expected_votes == 3 and status.cluster_name == "fake"
        await quorum.stop()

    run(scenario)


def test_listener_errors_are_contained(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        quorum = CorosyncQuorum(lambda: fake, sleep=Sleeps())
        seen: list[QuorumStatus] = []

        def broken(_status: QuorumStatus) -> None:
            raise RuntimeError("listener bug")

        quorum.subscribe(broken)
        quorum.subscribe(seen.append)
        await quorum.start()
        fake.change(quorate=False, view=(1,))
        await until(lambda: not quorum.current().quorate)
        assert len(seen) == 2
        await quorum.stop()

    run(scenario)
    assert any("listener failed" in r.getMessage() for r in caplog.records)


def test_dispatch_try_again_keeps_the_connection(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, _, _ = make(fake)
        await quorum.start()
        fake.fail = {"quorum_dispatch": CS_ERR_TRY_AGAIN}
        fake.change(quorate=False, view=(1,))
        await until(lambda: fake.count("quorum_dispatch") >= 3)
        assert quorum.current().connected and quorum.current().quorate
        fake.fail = {}
        await until(lambda: not quorum.current().quorate)
        assert quorum.current().connected and quorum.connects == 1
        await quorum.stop()

    run(scenario)


def test_connect_failing_halfway_closes_the_handle(fake: FakeCorosync) -> None:
    fake.fail = {"quorum_trackstart": CS_ERR_LIBRARY}

    async def scenario() -> None:
        quorum, _, _ = make(fake)
        await quorum.start()
        assert not quorum.current().connected
        assert fake.count("quorum_finalize") == 1 and fake.conns == {}
        fake.fail = {}
        await until(lambda: quorum.current().quorate)
        await quorum.stop()

    run(scenario)


def test_stop_cancels_the_reconnect_and_closes_everything(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, _, _ = make(fake)
        await quorum.start()
        assert len(fake.helpers) == 3
        await quorum.stop()
        assert fake.conns == {} and fake.helpers == {}
        assert quorum.current().reason == REASON_STOPPED
        # stopped while corosync is down: no reconnect attempts afterwards
        await quorum.start()
        fake.crash()
        await until(lambda: fake.count("quorum_initialize") >= 3)
        await quorum.stop()
        attempts = fake.count("quorum_initialize")
        await asyncio.sleep(0.05)
        assert fake.count("quorum_initialize") == attempts
        assert quorum.current().reason == REASON_STOPPED

    run(scenario)


def test_connection_lost_during_the_first_dispatch_keeps_reconnecting(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, _, _ = make(fake)
        fake.running = False
        await quorum.start()
        fake.restart()
        fake.fail_once = {"quorum_dispatch": CS_ERR_LIBRARY}  # dies right after connecting
        await until(lambda: quorum.current().quorate)
        assert quorum.connects == 2
        assert fake.count("quorum_finalize") == 1
        await quorum.stop()

    run(scenario)


def test_try_again_while_reconnecting_keeps_the_status(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, seen, _ = make(fake)
        await quorum.start()
        fake.crash()
        await until(lambda: not quorum.current().connected)
        fake.restart()
        fake.fail = {"quorum_initialize": CS_ERR_TRY_AGAIN}  # corosync still starting
        start = fake.count("quorum_initialize")
        await until(lambda: fake.count("quorum_initialize") >= start + 3)
        assert quorum.current().reason == REASON_LOST
        fake.fail = {}
        await until(lambda: quorum.current().quorate)
        assert [s.reason for s in seen] == ["quorate", REASON_LOST, "quorate"]
        await quorum.stop()

    run(scenario)


def test_unexpected_helper_errors_are_contained(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(handle: int, prefix: str) -> dict[str, CmapValue]:  # a decoding bug, say
        raise ValueError("cmap value of type 6 needs 4 bytes, got 1")

    fake.cmap_get_prefix = broken  # type: ignore[method-assign]

    async def scenario() -> None:
        quorum, _, _ = make(fake)
        await quorum.start()
        status = quorum.current()
        assert status.quorate and status.member_ids == (1, 2)
        assert status.cluster_name is None and status.members[0].name is None
        assert status.expected_votes == 3  # the other helpers still answered
        await quorum.stop()

    run(scenario)
    assert any("reading corosync details" in r.getMessage() for r in caplog.records)
