"""The domain cache: queries answered from the hypervisor's events with no call and no thread,
never from a list older than the last event, and not at all while events do not flow."""

from __future__ import annotations

import asyncio
import threading
import time

from tests.unit.fakes import until
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.domcache import DomainCache
from xvmd.core.executor import BackendRunner
from xvmd.core.operations import Clock
from xvmd.protocol.wire import Op, Result

UUID = "00000000-0000-4000-8000-00000000000a"
VM = DomainInfo("vm-a", UUID, DomainState.RUNNING)


def setup(events: bool = True) -> tuple[FakeBackend, BackendRunner, DomainCache]:
    backend = FakeBackend([VM], events=events)
    runner = BackendRunner(backend, Clock(time.monotonic, time.sleep), workers=2)
    cache = DomainCache(runner)
    return backend, runner, cache


async def started(cache: DomainCache, runner: BackendRunner) -> None:
    if await cache.start():
        runner.known = cache
        await until(lambda: cache.domains() is not None)


def deadline() -> float:
    return asyncio.get_running_loop().time() + 5


def test_status_and_list_come_from_the_events_without_a_hypervisor_call() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], Result, Result, int]:
        backend, runner, cache = setup()
        await started(cache, runner)
        backend.calls.clear()
        status = await runner.fence(Op.STATUS, "vm-a", deadline())
        listed = await runner.hostlist(deadline())
        calls = list(backend.calls)
        off = await runner.fence(Op.OFF, "vm-a", deadline())  # a power action asks libvirt
        await until(lambda: cache.domains() is not None)
        after = await runner.fence(Op.STATUS, "vm-a", deadline())
        await cache.stop()
        runner.shutdown()
        assert [r.name for r in listed] == ["vm-a"]
        return calls, status.result, after.result, off.result

    calls, status, after, off = asyncio.run(scenario())
    assert calls == []
    assert (status, off, after) == (Result.SUCCESS, Result.SUCCESS, Result.OFF)


def test_an_event_empties_the_cache_before_anything_else_is_answered() -> None:
    async def scenario() -> list[bool]:
        _, runner, cache = setup()
        await started(cache, runner)
        seen = []
        cache.changed()  # as the event thread's call_soon_threadsafe would
        seen.append(cache.domains() is None)
        await until(lambda: cache.domains() is not None)
        seen.append(True)
        await cache.stop()
        runner.shutdown()
        return seen

    assert asyncio.run(scenario()) == [True, True]


def test_a_list_read_while_an_event_went_by_is_not_kept() -> None:
    async def scenario() -> tuple[int, DomainState]:
        backend, runner, cache = setup()
        await started(cache, runner)
        gate = threading.Event()
        real = backend.list_domains

        def slow() -> list[DomainInfo]:
            listed = real()
            gate.wait(5)  # the domain changes while this (old) list is on its way
            return listed

        backend.list_domains = slow  # type: ignore[method-assign]
        cache.changed()
        await until(lambda: any(c[0] == "list_domains" for c in backend.calls))
        backend.set_state(UUID, DomainState.SHUTOFF)  # an event: the read above is stale
        await until(lambda: cache.domains() is None and not gate.is_set())
        gate.set()
        await until(lambda: cache.domains() is not None)
        known = cache.domains()
        assert known is not None
        reads = sum(1 for c in backend.calls if c[0] == "list_domains")
        await cache.stop()
        runner.shutdown()
        return reads, known[0].state

    reads, state = asyncio.run(scenario())
    assert state is DomainState.SHUTOFF and reads >= 2


def test_without_events_there_is_no_cache() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        backend, runner, cache = setup(events=False)
        await started(cache, runner)
        await runner.fence(Op.STATUS, "vm-a", deadline())
        runner.shutdown()
        return cache.events, [c[0] for c in backend.calls]

    events, calls = asyncio.run(scenario())
    assert not events and "lookup" in calls


def test_when_events_stop_flowing_queries_ask_the_hypervisor_again() -> None:
    async def scenario() -> list[str]:
        backend, runner, cache = setup()
        await started(cache, runner)
        backend.unwatch()  # the event connection is lost: watching() says so at once
        backend.calls.clear()
        await runner.fence(Op.STATUS, "vm-a", deadline())
        runner.shutdown()
        return [c[0] for c in backend.calls]

    assert "lookup" in asyncio.run(scenario())


def test_subscribers_hear_of_an_event_once_the_new_list_is_in() -> None:
    """The host group's inventory reads the list through the runner: after an event it must
    find the cache's new list, not read the hypervisor a second time."""

    async def scenario() -> tuple[list[tuple[str, str]], list[str]]:
        backend, runner, cache = setup()
        await started(cache, runner)
        heard: list[str] = []

        def changed() -> None:
            async def read() -> None:
                heard.append(",".join(d.name for d in await runner.hostlist(deadline())))

            asyncio.get_running_loop().create_task(read())

        cache.subscribe(changed)
        backend.calls.clear()
        backend.add_domain(DomainInfo("vm-b", UUID.replace("a", "b"), DomainState.RUNNING))
        await until(lambda: bool(heard))
        calls = list(backend.calls)
        await cache.stop()
        runner.shutdown()
        return calls, heard

    calls, heard = asyncio.run(scenario())
    assert heard == ["vm-a,vm-b"]
    assert calls.count(("list_domains", "")) == 1  # the cache's read, and no other
