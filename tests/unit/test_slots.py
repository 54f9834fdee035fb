"""Session slots: a quota place is given back exactly when its session ends, however it ends,
and a stop waits for the sessions in flight, then cuts off the rest and names those that were
acting."""

from __future__ import annotations

import asyncio

import pytest

from xvmd.core.limits import Quota, Ticket
from xvmd.core.slots import SessionSlots, Slot


def ticket(quota: Quota) -> Ticket:
    taken = quota.take("peer")
    assert isinstance(taken, Ticket)
    return taken


@pytest.mark.parametrize("ending", ["returns", "raises"])
def test_a_spawned_session_gives_its_place_back_when_it_ends(ending: str) -> None:
    async def scenario() -> tuple[int, int, int]:
        quota, slots = Quota(4, 4), SessionSlots[str]()
        go = asyncio.Event()

        async def work(slot: Slot[str]) -> None:
            await go.wait()
            if ending == "raises":
                raise RuntimeError("session failed")

        slots.spawn(ticket(quota), work)
        await asyncio.sleep(0)
        during = quota.used
        go.set()
        await slots.idle()
        return during, quota.used, slots.in_flight

    assert asyncio.run(scenario()) == (1, 0, 0)


def test_a_session_cancelled_before_it_ran_gives_its_place_back() -> None:
    async def scenario() -> tuple[bool, int, int]:
        quota, slots = Quota(4, 4), SessionSlots[str]()
        ran: list[bool] = []

        async def work(slot: Slot[str]) -> None:
            ran.append(True)

        slots.spawn(ticket(quota), work)
        (task,) = asyncio.all_tasks() - {asyncio.current_task()}
        task.cancel()  # before its first step: its ``finally`` never runs
        await asyncio.gather(task, return_exceptions=True)
        return bool(ran), quota.used, slots.in_flight

    assert asyncio.run(scenario()) == (False, 0, 0)


def test_an_early_release_frees_the_place_while_the_session_stays_in_flight() -> None:
    async def scenario() -> tuple[int, int]:
        quota, slots = Quota(4, 4), SessionSlots[str]()
        released, go = asyncio.Event(), asyncio.Event()

        async def work(slot: Slot[str]) -> None:
            slot.release()
            slot.release()  # idempotent: the place is given back once
            released.set()
            await go.wait()

        slots.spawn(ticket(quota), work)
        await released.wait()
        seen = (quota.used, slots.in_flight)
        go.set()
        await slots.idle()
        return seen

    assert asyncio.run(scenario()) == (0, 1)


def test_hold_counts_the_current_task_until_the_block_ends() -> None:
    async def scenario() -> list[tuple[int, int]]:
        quota, slots = Quota(4, 4), SessionSlots[str]()
        seen = []
        with slots.hold(ticket(quota)):
            seen.append((quota.used, slots.in_flight))
        seen.append((quota.used, slots.in_flight))
        return seen

    assert asyncio.run(scenario()) == [(1, 1), (0, 0)]


def test_idle_also_waits_for_sessions_that_start_meanwhile() -> None:
    async def scenario() -> list[str]:
        quota, slots = Quota(4, 4), SessionSlots[str]()
        done: list[str] = []

        async def second(slot: Slot[str]) -> None:
            done.append("second")

        async def first(slot: Slot[str]) -> None:
            slots.spawn(ticket(quota), second)
            done.append("first")

        slots.spawn(ticket(quota), first)
        await slots.idle()
        return done

    assert asyncio.run(scenario()) == ["first", "second"]


def test_drain_waits_then_cuts_off_and_names_only_the_sessions_that_were_acting() -> None:
    async def scenario() -> tuple[int, list[str], list[str], int]:
        quota, slots = Quota(4, 4), SessionSlots[str]()
        finished: list[str] = []
        unknown: list[str] = []
        stuck = asyncio.Event()  # never set

        async def quick(slot: Slot[str]) -> None:
            finished.append("quick")

        async def acting(slot: Slot[str]) -> None:
            with slot.acting_on("off vm1"):
                await stuck.wait()

        async def waiting(slot: Slot[str]) -> None:
            await stuck.wait()  # e.g. mid-handshake: nothing was done yet

        for work in (quick, acting, waiting):
            slots.spawn(ticket(quota), work)

        async def record(what: str) -> None:
            unknown.append(what)

        cut = await slots.drain(0.01, record)
        return cut, finished, unknown, quota.used

    assert asyncio.run(scenario()) == (2, ["quick"], ["off vm1"], 0)


def test_drain_with_nothing_in_flight_returns_at_once() -> None:
    assert asyncio.run(SessionSlots[str]().drain(10.0, _never)) == 0


async def _never(what: str) -> None:
    raise AssertionError(f"nothing was acting, yet {what!r} was reported")
