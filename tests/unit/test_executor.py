"""BackendRunner: per-domain serialisation, cross-domain parallelism and deadlines.

Each test runs its own event loop with ``asyncio.run``. Calls that must block a worker thread
wait on a gate the test opens (``GatedBackend``), so what runs when is decided by events; the
only waits left are the deadlines under test, and short ``delay``s where a slow call is itself
the behaviour (an overlap would have to show).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from tests.unit.fakes import until
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.executor import POWER_BUDGET, QUERY_BUDGET, BackendRunner
from xvmd.core.operations import Clock
from xvmd.protocol.wire import HostRecord, Op, Result

T = TypeVar("T")
S = DomainState
UUID_A = "aaaaaaaa-0000-4000-8000-00000000000a"
UUID_B = "bbbbbbbb-0000-4000-8000-00000000000b"
REAL_CLOCK = Clock(time.monotonic, time.sleep)


class TracingBackend(FakeBackend):
    """Records when each state-reading or state-changing call runs, and how many overlap."""

    def __init__(self, domains: list[DomainInfo]) -> None:
        super().__init__(domains)
        self.trace_lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.intervals: list[tuple[str, str, float, float]] = []

    def traced(self, name: str, uuid: str, fn: Callable[[str], T]) -> T:
        with self.trace_lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        start = time.monotonic()
        try:
            return fn(uuid)
        finally:
            end = time.monotonic()
            with self.trace_lock:
                self.active -= 1
                self.intervals.append((name, uuid, start, end))

    def state(self, uuid: str) -> DomainInfo | None:
        return self.traced("state", uuid, super().state)

    def destroy(self, uuid: str) -> None:
        self.traced("destroy", uuid, super().destroy)

    def start(self, uuid: str) -> None:
        self.traced("start", uuid, super().start)

    def resume(self, uuid: str) -> None:
        self.traced("resume", uuid, super().resume)


class GatedBackend(TracingBackend):
    """``gated`` calls say they started, then block their worker until ``gate`` is opened."""

    def __init__(self, domains: list[DomainInfo], gated: str) -> None:
        super().__init__(domains)
        self.gated = gated
        self.started = threading.Event()
        self.gate = threading.Event()

    def hold(self, name: str) -> None:
        if name == self.gated:
            self.started.set()
            assert self.gate.wait(5), "the test never opened the gate"

    def lookup(self, target: str, *, exact: bool = False, uuid_only: bool = False) -> DomainInfo:
        self.hold("lookup")
        return super().lookup(target, exact=exact, uuid_only=uuid_only)

    def destroy(self, uuid: str) -> None:
        self.hold("destroy")
        super().destroy(uuid)

    def lookups(self, target: str) -> int:
        return self.calls.count(("lookup", target))


async def started(backend: GatedBackend) -> None:
    """Until the gated call is under way in its worker."""
    assert await asyncio.to_thread(backend.started.wait, 5)


def domains() -> list[DomainInfo]:
    return [DomainInfo("a", UUID_A, S.RUNNING), DomainInfo("b", UUID_B, S.RUNNING)]


def run_with(
    backend: FakeBackend,
    scenario: Callable[[BackendRunner], Awaitable[None]],
    workers: int = 8,
) -> None:
    """Run ``scenario(runner)`` (a coroutine function) on a fresh loop and pool."""

    async def main() -> None:
        runner = BackendRunner(backend, REAL_CLOCK, workers=workers)
        try:
            await scenario(runner)
        finally:
            runner.shutdown()

    asyncio.run(main())


def test_budgets() -> None:
    runner = BackendRunner(FakeBackend(), REAL_CLOCK, workers=1)
    try:
        assert runner.budget_for(Op.OFF) == runner.budget_for(Op.REBOOT) == POWER_BUDGET
        assert runner.budget_for(Op.ON) == POWER_BUDGET
        assert runner.budget_for(Op.STATUS) == runner.budget_for(Op.HOSTLIST) == QUERY_BUDGET
        assert QUERY_BUDGET < POWER_BUDGET < 30.0  # the client gives up after 30 s
    finally:
        runner.shutdown()


def test_basic_operations() -> None:
    backend = FakeBackend(domains())

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        assert (await runner.fence(Op.STATUS, "a", deadline)).result is Result.SUCCESS
        off = await runner.fence(Op.OFF, "a", deadline)
        assert off.result is Result.SUCCESS
        assert off.domain is not None and off.domain.uuid == UUID_A
        assert (await runner.fence(Op.STATUS, "a", deadline)).result is Result.OFF
        assert (await runner.fence(Op.ON, UUID_A, deadline)).result is Result.SUCCESS
        assert (await runner.fence(Op.STATUS, "missing", deadline)).result is Result.OFF
        assert (await runner.fence(Op.OFF, "missing", deadline)).result is Result.FAIL
        assert (await runner.fence(Op.DEVSTATUS, "", deadline)).result is Result.SUCCESS
        assert (await runner.fence(Op.NULL, "", deadline)).result is Result.FAIL
        records = await runner.hostlist(deadline)
        assert sorted(records, key=lambda r: r.name) == [
            HostRecord("a", UUID_A, 1),
            HostRecord("b", UUID_B, 1),
        ]
        assert await runner.check_connection(deadline) is True
        assert runner.held_domains == frozenset()  # no per-domain lock outlives its users

    run_with(backend, scenario)
    assert backend.state(UUID_A) is not None


def test_slow_domain_does_not_delay_another() -> None:
    backend = GatedBackend(domains(), gated="destroy")

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        slow = asyncio.create_task(runner.fence(Op.OFF, "a", loop.time() + 5))
        await started(backend)  # A's destroy holds a worker
        fast = await runner.fence(Op.STATUS, "b", loop.time() + 5)
        assert fast.result is Result.SUCCESS
        assert not slow.done()  # B was answered while A was still blocked
        backend.gate.set()
        assert (await slow).result is Result.SUCCESS

    run_with(backend, scenario)


class MeetingBackend(FakeBackend):
    """Each destroy waits until a second one is running too: serialised, they never meet."""

    def __init__(self, domains: list[DomainInfo]) -> None:
        super().__init__(domains)
        self.meeting = threading.Barrier(2, timeout=2.0)

    def destroy(self, uuid: str) -> None:
        self.meeting.wait()  # BrokenBarrierError, and a failed test, unless both run at once
        super().destroy(uuid)


def test_different_domains_run_in_parallel() -> None:
    backend = MeetingBackend(domains())

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        outs = await asyncio.gather(
            runner.fence(Op.OFF, "a", loop.time() + 5),
            runner.fence(Op.OFF, "b", loop.time() + 5),
        )
        assert [o.result for o in outs] == [Result.SUCCESS, Result.SUCCESS]

    run_with(backend, scenario)
    assert not backend.meeting.broken
    assert sorted(arg for call, arg in backend.calls if call == "destroy") == [UUID_A, UUID_B]


def test_same_domain_operations_do_not_overlap() -> None:
    backend = TracingBackend(domains())
    # Slow calls are the behaviour here: were the runner to let them overlap, it would show.
    backend.delay["destroy"] = 0.05
    backend.delay["start"] = 0.05

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        outs = await asyncio.gather(
            runner.fence(Op.REBOOT, "a", loop.time() + 5),
            runner.fence(Op.REBOOT, "a", loop.time() + 5),
            runner.fence(Op.REBOOT, UUID_A, loop.time() + 5),
        )
        assert [o.result for o in outs] == [Result.SUCCESS] * 3
        assert runner.held_domains == frozenset()

    run_with(backend, scenario)
    assert backend.max_active == 1
    power = sorted((s, e, n) for n, u, s, e in backend.intervals if n in ("destroy", "start"))
    assert [n for _s, _e, n in power] == ["destroy", "start"] * 3
    for (_s1, end1, _n1), (start2, _e2, _n2) in itertools.pairwise(power):
        assert end1 <= start2
    info = backend.state(UUID_A)
    assert info is not None and info.state is S.RUNNING


def test_same_domain_runs_in_arrival_order() -> None:
    backend = GatedBackend(domains(), gated="destroy")

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(runner.fence(Op.OFF, "a", loop.time() + 5))
        await started(backend)  # "off" holds the domain now
        second = asyncio.create_task(runner.fence(Op.ON, "a", loop.time() + 5))
        await until(lambda: backend.lookups("a") == 2)  # "on" resolved the name: it waits
        assert not second.done()
        backend.gate.set()
        assert (await second).result is Result.SUCCESS
        assert first.done()
        assert (await first).result is Result.SUCCESS

    run_with(backend, scenario)
    names = [n for n, _u, _s, _e in sorted(backend.intervals, key=lambda i: i[2])]
    assert names.index("destroy") < names.index("start")
    info = backend.state(UUID_A)
    assert info is not None and info.state is S.RUNNING


def test_hung_call_fails_promptly_and_keeps_domain_locked() -> None:
    backend = GatedBackend(domains(), gated="destroy")

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        hung = await runner.fence(Op.OFF, "a", t0 + 0.15)  # the deadline under test
        assert hung.result is Result.FAIL
        assert "continues" in hung.detail
        assert loop.time() - t0 < 0.5
        assert runner.held_domains == {UUID_A}

        # The worker is still inside destroy: a second operation on A may not start.
        blocked = await runner.fence(Op.ON, "a", loop.time() + 0.15)
        assert blocked.result is Result.FAIL
        assert "still running" in blocked.detail
        assert ("start", UUID_A) not in backend.calls
        assert ("resume", UUID_A) not in backend.calls

        # Another domain is not affected.
        other = await runner.fence(Op.STATUS, "b", loop.time() + 1)
        assert other.result is Result.SUCCESS

        # A patient power action waits for the hung worker to finish, then sees what it did:
        # the domain is off already, so it is not destroyed a second time.
        after = asyncio.create_task(runner.fence(Op.OFF, "a", loop.time() + 5))
        await until(lambda: backend.lookups("a") == 3)
        assert not after.done()
        backend.gate.set()
        assert (await after).result is Result.SUCCESS
        assert [c for c in backend.calls if c[0] == "destroy"] == [("destroy", UUID_A)]
        assert (await runner.fence(Op.STATUS, "a", loop.time() + 1)).result is Result.OFF
        assert runner.held_domains == frozenset()

    run_with(backend, scenario)


def test_hung_lookup_hits_the_deadline() -> None:
    backend = GatedBackend(domains(), gated="lookup")

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await runner.fence(Op.STATUS, "a", t0 + 0.1)  # the deadline under test
        assert out.result is Result.FAIL
        assert loop.time() - t0 < 0.4
        # Let the hung worker finish before the loop closes: with one worker, this check
        # runs only after it, and its result arrives after the lookup's.
        backend.gate.set()
        assert await runner.check_connection(loop.time() + 5) is True

    run_with(backend, scenario, workers=1)


def test_backend_unavailable() -> None:
    backend = FakeBackend(domains())
    backend.available = False

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        for op in (Op.STATUS, Op.OFF, Op.ON, Op.REBOOT, Op.DEVSTATUS):
            out = await runner.fence(op, "a", deadline)
            assert out.result is Result.FAIL, op
        assert await runner.check_connection(deadline) is False
        with pytest.raises(Exception, match="down"):
            await runner.hostlist(deadline)

    run_with(backend, scenario)
    assert ("destroy", UUID_A) not in backend.calls


def test_backend_lost_after_lookup() -> None:
    """The hypervisor goes away between resolving the name and acting on it."""

    class Flaky(FakeBackend):
        def lookup(
            self, target: str, *, exact: bool = False, uuid_only: bool = False
        ) -> DomainInfo:
            info = super().lookup(target, exact=exact, uuid_only=uuid_only)
            self.available = False
            return info

    backend = Flaky(domains())

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        out = await runner.fence(Op.OFF, "a", loop.time() + 5)
        assert out.result is Result.FAIL
        assert runner.held_domains == frozenset()

    run_with(backend, scenario)


def test_ambiguous_name_fails_instead_of_reporting_off() -> None:
    backend = FakeBackend(
        [DomainInfo("db", UUID_A, S.RUNNING), DomainInfo("DB", UUID_B, S.RUNNING)]
    )

    async def scenario(runner: BackendRunner) -> None:
        loop = asyncio.get_running_loop()
        out = await runner.fence(Op.STATUS, "Db", loop.time() + 5)
        assert out.result is Result.FAIL
        assert "ambiguous" in out.detail
        assert (await runner.fence(Op.STATUS, "DB", loop.time() + 5)).result is Result.SUCCESS

    run_with(backend, scenario)


def test_lookup_mode_reaches_the_backend() -> None:
    """cluster.conf mode asks for an exact (or UUID-only) match; --no-ccs keeps the loose one."""
    twin = DomainInfo(UUID_A, UUID_B, S.RUNNING)  # named like domain a's UUID
    backend = FakeBackend([DomainInfo("Web", UUID_A, S.RUNNING), twin])

    async def scenario(runner: BackendRunner) -> None:
        deadline = asyncio.get_running_loop().time() + 5
        missing = await runner.fence(Op.OFF, "web", deadline, exact=True)
        assert (missing.result, missing.detail) == (Result.FAIL, "no such domain")
        assert (await runner.fence(Op.STATUS, "web", deadline, exact=True)).result is Result.OFF
        twice = await runner.fence(Op.OFF, UUID_A, deadline, exact=True)
        assert twice.result is Result.FAIL and "is ambiguous" in twice.detail
        assert not called(backend, "destroy")
        by_uuid = await runner.fence(Op.OFF, UUID_A, deadline, exact=True, uuid_only=True)
        assert by_uuid.result is Result.SUCCESS
        assert called(backend, "destroy") == [UUID_A]
        loose = await runner.fence(Op.STATUS, "web", deadline)  # --no-ccs: case-insensitive
        assert loose.result is Result.OFF and loose.domain is not None
        assert loose.domain.uuid == UUID_A

    run_with(backend, scenario)


def called(backend: FakeBackend, name: str) -> list[str]:
    return [arg for call, arg in backend.calls if call == name]
