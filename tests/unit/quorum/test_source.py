"""CorosyncQuorum on a real event loop, with the C layer replaced by FakeCorosync.

Nothing here waits on the wall clock: the source's ``sleep`` is ``Sleeps`` (records the delay,
returns at the next loop turn, or once released while held), ``until`` checks its condition
between loop turns, and the tests observe through ``current()``, the fake and the log.
``time.sleep`` raises throughout: the event loop must never sleep.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.unit.quorum.fake_corosync import FakeCorosync
from xvmd.quorum import NOT_CONNECTED, Member
from xvmd.quorum.binding import SONAMES, CorosyncLibrary, CtypesCorosync
from xvmd.quorum.corotypes import (
    CS_ERR_ACCESS,
    CS_ERR_LIBRARY,
    CS_ERR_NOT_EXIST,
    CS_ERR_TRY_AGAIN,
    QUORUM_FREE,
    CmapValue,
    VoteInfo,
)
from xvmd.quorum.source import CorosyncQuorum
from xvmd.quorum.status import (
    REASON_LOST,
    REASON_NO_LIBRARIES,
    REASON_QUORUM_FREE,
    REASON_STOPPED,
)


@pytest.fixture(autouse=True)
def no_blocking_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) would block the event loop")

    monkeypatch.setattr(time, "sleep", refuse)


class Sleeps:
    """The source's ``sleep``: records each delay and returns at the next loop turn; while
    held, delays shorter than the hold's bound (the busy retries) wait until released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._bound = 0.0
        self._open = asyncio.Event()

    def hold(self, shorter_than: float = math.inf) -> None:
        self._bound = shorter_than
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
        if delay < self._bound:
            await self._open.wait()


@pytest.fixture
def fake() -> Iterator[FakeCorosync]:
    lib = FakeCorosync()
    yield lib
    lib.close()


def make(fake: FakeCorosync) -> tuple[CorosyncQuorum, Sleeps]:
    sleeps = Sleeps()

    def library() -> CorosyncLibrary:
        return fake

    return CorosyncQuorum(library, sleep=sleeps, clock=lambda: 42.0), sleeps


async def until(predicate: Callable[[], bool], turns: int = 10_000) -> None:
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


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def quorate_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in messages(caplog, logging.INFO) if "is quorate" in m]


def test_start_publishes_quorum_and_membership(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")

    async def scenario() -> None:
        quorum, _ = make(fake)
        await quorum.start()
        status = quorum.current()
        # the CURRENT notification is taken during start(): one status, already complete
        assert quorate_lines(caplog) == [
            "corosync cluster fake is quorate "
            "(2 members: 1 (node1), 2 (node2), 2/3 votes, quorum 2)"
        ]
        assert status.connected and status.quorate and status.quorum_set
        assert status.members == (
            Member(1, "node1", ("10.0.0.1",)),
            Member(2, "node2", ("10.0.0.2",)),
        )
        assert status.ring_id == (1, 8)
        assert (status.expected_votes, status.total_votes, status.quorum) == (3, 2, 2)
        assert status.cluster_name == "fake" and status.local_nodeid == 1
        assert status.changed_at == 42.0
        assert quorum.connects == 1 and not quorum.reconnecting
        assert fake.count("quorum_trackstart") == 1
        await quorum.stop()

    run(scenario)


def test_changes_are_published_and_logged(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "xvmd.quorum")

    async def scenario() -> None:
        quorum, _ = make(fake)
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
        await quorum.stop()

    run(scenario)
    assert len(messages(caplog, logging.WARNING)) == 1
    info = messages(caplog, logging.INFO)
    assert info[0].startswith("corosync cluster fake is quorate (2 members")
    assert info[1].startswith("corosync cluster fake is quorate (3 members")
    assert info[2].startswith("corosync cluster fake membership changed, quorate (2 members")
    assert info[3] == REASON_STOPPED


def test_notifications_in_one_dispatch_publish_once(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")

    async def scenario() -> None:
        quorum, _ = make(fake)
        await quorum.start()
        fake.change(quorate=False, view=(1,))
        fake.change(quorate=True, view=(1, 2, 3), seq=99)
        await until(lambda: quorum.current().member_ids == (1, 2, 3))
        await loop_turns(20)
        assert quorum.current().ring_id == (1, 99)
        assert fake.count("votequorum_getinfo") == 2  # start, then one refresh for both
        await quorum.stop()

    run(scenario)
    # start, then the last of the two notifications only: the not-quorate one was never published
    assert messages(caplog, logging.WARNING) == []
    info = messages(caplog, logging.INFO)
    assert info[0].startswith("corosync cluster fake is quorate (2 members")
    assert info[1].startswith("corosync cluster fake membership changed, quorate (3 members")
    assert info[2:] == [REASON_STOPPED]


def test_crash_reconnects_with_backoff_and_logs_once(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")

    async def scenario() -> None:
        quorum, sleeps = make(fake)
        await quorum.start()
        fake.crash()
        await until(lambda: not quorum.current().connected)
        assert quorum.reconnecting
        down = quorum.current()
        assert (down.quorate, down.reason, down.members) == (False, REASON_LOST, ())
        assert down.cluster_name == "fake"  # still says which cluster it is about
        assert fake.count("quorum_finalize") == 1
        assert fake.conns == {}  # the old connection is closed (its reader removed first)
        await until(lambda: fake.count("quorum_initialize") >= 8)
        assert sleeps.delays[:7] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
        fake.restart()
        await until(lambda: quorum.current().quorate)
        assert quorum.connects == 2 and not quorum.reconnecting
        # one log line for the loss, none per failed retry
        assert len(messages(caplog, logging.WARNING)) == 1
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
        quorum, _ = make(fake)
        await quorum.start()  # never raises
        status = quorum.current()
        assert not status.connected and not status.quorate
        assert status.reason.startswith("corosync is not running (cannot connect")
        await until(lambda: fake.count("quorum_initialize") >= 4)
        assert quorum.current() == status  # not republished per retry
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
        quorum, _ = make(fake)
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
        assert not quorum.reconnecting  # nothing to retry until the package is installed
        await quorum.stop()

    run(scenario)
    assert messages(caplog, logging.ERROR) == [f"{REASON_NO_LIBRARIES}: fencing refused"]


def test_real_loader_without_libraries_reports_them_missing() -> None:
    def library() -> CorosyncLibrary:
        return CtypesCorosync({**SONAMES, "cmap": "libcmap-not-here.so.99"})

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
        quorum, _ = make(fake)
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


def test_dispatch_try_again_keeps_the_connection(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, _ = make(fake)
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
        quorum, _ = make(fake)
        await quorum.start()
        assert not quorum.current().connected
        assert fake.count("quorum_finalize") == 1 and fake.conns == {}
        fake.fail = {}
        await until(lambda: quorum.current().quorate)
        await quorum.stop()

    run(scenario)


def test_stop_cancels_the_reconnect_and_closes_everything(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, _ = make(fake)
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
        assert not quorum.reconnecting
        attempts = fake.count("quorum_initialize")
        await loop_turns(100)
        assert fake.count("quorum_initialize") == attempts
        assert quorum.current().reason == REASON_STOPPED

    run(scenario)


def test_connection_lost_during_the_first_dispatch_keeps_reconnecting(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, _ = make(fake)
        fake.running = False
        await quorum.start()
        fake.restart()
        fake.fail_once = {"quorum_dispatch": CS_ERR_LIBRARY}  # dies right after connecting
        await until(lambda: quorum.current().quorate)
        assert quorum.connects == 2
        assert fake.count("quorum_finalize") == 1
        await quorum.stop()

    run(scenario)


def test_try_again_while_reconnecting_keeps_the_status(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")

    async def scenario() -> None:
        quorum, _ = make(fake)
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
        await quorum.stop()

    run(scenario)
    # quorate, lost, quorate: nothing said per busy retry
    assert messages(caplog, logging.WARNING) == [f"{REASON_LOST} (fencing refused meanwhile)"]
    assert len(quorate_lines(caplog)) == 2


def test_unexpected_helper_errors_are_contained(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(handle: int, prefix: str) -> dict[str, CmapValue]:  # a decoding bug, say
        raise ValueError("cmap value of type 6 needs 4 bytes, got 1")

    fake.cmap_get_prefix = broken  # type: ignore[method-assign]

    async def scenario() -> None:
        quorum, _ = make(fake)
        await quorum.start()
        status = quorum.current()
        assert status.quorate and status.member_ids == (1, 2)
        assert status.cluster_name is None and status.members[0].name is None
        assert status.expected_votes == 3  # the other helpers still answered
        await quorum.stop()

    run(scenario)
    assert any("reading corosync details" in r.getMessage() for r in caplog.records)


# --- a busy corosync (CS_ERR_TRY_AGAIN) is asked again later, from the loop ----------------------


def test_try_again_at_connect_is_asked_again_without_blocking_the_loop(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")
    fake.busy = {"quorum_getquorate": 3}

    async def scenario() -> None:
        quorum, sleeps = make(fake)
        loop = asyncio.get_running_loop()
        ticking = asyncio.Event()
        ticking.set()

        def tick() -> None:  # another loop callback: it runs whenever the loop is free
            fake.calls.append("tick")
            if ticking.is_set():
                loop.call_soon(tick)

        loop.call_soon(tick)
        await quorum.start()
        assert quorum.current() is NOT_CONNECTED  # busy: nothing published yet
        assert quorum.reconnecting
        await until(lambda: quorum.current().quorate)
        ticking.clear()
        assert sleeps.delays == pytest.approx([0.02, 0.04, 0.06])
        assert quorum.connects == 1 and not quorum.reconnecting
        asks = [i for i, call in enumerate(fake.calls) if call == "quorum_getquorate"]
        assert len(asks) == 4
        for before, after in itertools.pairwise(asks):
            assert "tick" in fake.calls[before:after]  # the loop ran between two asks
        # each busy attempt closed its half-open handle
        assert fake.count("quorum_finalize") == 3 and len(fake.conns) == 1
        await quorum.stop()

    run(scenario)
    assert messages(caplog, logging.WARNING) == []
    assert len(quorate_lines(caplog)) == 1


def test_try_again_at_connect_gives_up_after_five_asks_then_backs_off(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")
    fake.fail = {"quorum_initialize": CS_ERR_TRY_AGAIN}

    async def scenario() -> None:
        quorum, sleeps = make(fake)
        await quorum.start()
        await until(lambda: len(sleeps.delays) >= 10)
        quick = [0.02, 0.04, 0.06, 0.08]
        assert sleeps.delays[:10] == pytest.approx([*quick, 0.2, *quick, 0.4])
        assert quorum.current().reason == "cannot connect to corosync (CS_ERR_TRY_AGAIN); retrying"
        fake.fail = {}
        await until(lambda: quorum.current().quorate)
        await quorum.stop()

    run(scenario)
    assert messages(caplog, logging.WARNING) == [
        "cannot connect to corosync (CS_ERR_TRY_AGAIN); retrying (fencing refused meanwhile)"
    ]


def test_good_news_waits_for_the_details_a_busy_helper_owes(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")
    fake.busy = {"cmap_get_prefix": 2}

    async def scenario() -> None:
        quorum, sleeps = make(fake)
        await quorum.start()
        assert quorum.connects == 1
        assert quorum.current() is NOT_CONNECTED  # quorate, but names and nodelist still owed
        await until(lambda: quorum.current().quorate)
        status = quorum.current()
        assert status.members[0] == Member(1, "node1", ("10.0.0.1",))
        assert status.cluster_name == "fake"
        assert sleeps.delays == pytest.approx([0.02, 0.04])
        await quorum.stop()

    run(scenario)
    assert quorate_lines(caplog) == [
        "corosync cluster fake is quorate (2 members: 1 (node1), 2 (node2), 2/3 votes, quorum 2)"
    ]


def test_bad_news_is_published_at_once_while_a_helper_is_busy(
    fake: FakeCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "xvmd.quorum")

    async def scenario() -> None:
        quorum, sleeps = make(fake)
        await quorum.start()
        sleeps.hold()  # the re-read waits until released
        fake.busy = {"votequorum_getinfo": 1, "cmap_get_prefix": 1}
        fake.votes[0] = VoteInfo(node_id=1, expected_votes=3, total_votes=1, quorum=2)
        fake.change(quorate=False, view=(1,))
        await until(lambda: not quorum.current().quorate)
        status = quorum.current()
        assert status.connected
        assert status.reason == "this partition is not quorate: fencing refused"  # votes owed
        assert status.expected_votes is None  # an old count would mislead: none meanwhile
        assert status.members == (Member(1, "node1", ("10.0.0.1",)),)  # cmap's last answer
        assert status.cluster_name == "fake"
        await loop_turns(20)
        assert sleeps.delays == pytest.approx([0.02])  # the re-read is waiting
        assert quorum.current() == status
        sleeps.release()
        await until(lambda: quorum.current().expected_votes == 3)
        assert "(1 of 3 expected votes, 2 needed)" in quorum.current().reason
        await quorum.stop()

    run(scenario)
    assert messages(caplog, logging.WARNING) == [
        "corosync cluster fake: this partition is not quorate: fencing refused "
        "(1 member: 1 (node1))"
    ]


def test_a_re_read_owed_to_a_lost_session_is_dropped(fake: FakeCorosync) -> None:
    async def scenario() -> None:
        quorum, sleeps = make(fake)
        await quorum.start()
        sleeps.hold(shorter_than=0.1)  # the busy re-reads wait; the reconnect does not
        fake.busy = {"cfg_get_node_addrs": 1}
        fake.change(quorate=True, view=(1, 2, 3))
        await until(lambda: quorum.current().member_ids == (1, 2, 3))
        fake.crash()  # with the re-read still owed
        await until(lambda: not quorum.current().connected)
        fake.restart()
        fake.busy = {"cfg_get_node_addrs": 1}  # and the new session's first read is busy too
        await until(lambda: quorum.connects == 2)
        assert not quorum.current().connected  # quorate again: waits for its own re-read
        reads = fake.count("cfg_local_get")
        sleeps.release()
        await until(lambda: quorum.current().quorate)
        assert fake.count("cfg_local_get") == reads + 1  # the new session's re-read only
        await quorum.stop()

    run(scenario)
