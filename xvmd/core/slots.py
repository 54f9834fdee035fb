"""Session slots: which tasks hold a place in a session quota, and what a stop must wait for.

One accounting for both ways a session starts: a connect-back task spawned for an admitted
datagram (``spawn``), and a ``fence_virt -T`` listener client served in its own task
(``hold``). Either way the slot is given back, and its quota ticket released, exactly when
the task ends, however it ends (returned, raised, cancelled before it ever ran); a session may
give its quota place back earlier (``Slot.release``) and stay in flight until it returns.

``drain`` waits for the sessions in flight at a stop, and tells which ones were carrying out a
request when they were cut off (``Slot.acting``), so that their outcome is recorded as unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

from xvmd.core.limits import Ticket

T = TypeVar("T")

CANCEL_GRACE = 1.0
"""Seconds cut-off sessions get to unwind after they are cancelled (close their sockets, run
their ``finally``): enough for a few loop turns, short enough to keep a stop bounded."""


class Slot(Generic[T]):
    """One session's place: its quota ticket, and what it is doing while it acts."""

    __slots__ = ("_acting", "_ticket")

    def __init__(self, ticket: Ticket) -> None:
        self._ticket = ticket
        self._acting: T | None = None

    @property
    def acting(self) -> T | None:
        """What the session is carrying out (set by ``acting_on``); None otherwise."""
        return self._acting

    def release(self) -> None:
        """Give the quota place back now (idempotent); the task stays in flight until it ends."""
        self._ticket.release()

    @contextlib.contextmanager
    def acting_on(self, what: T) -> Iterator[None]:
        """Between "authenticated" and "answered": what a stop would leave unknown."""
        self._acting = what
        try:
            yield
        finally:
            self._acting = None

    def _take_acting(self) -> T | None:
        acting, self._acting = self._acting, None
        return acting


class SessionSlots(Generic[T]):
    def __init__(self) -> None:
        self._held: dict[asyncio.Task[None], Slot[T]] = {}

    @property
    def in_flight(self) -> int:
        """Sessions whose task has not ended yet (what ``drain`` would wait for)."""
        return len(self._held)

    def spawn(self, ticket: Ticket, work: Callable[[Slot[T]], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` in a new task holding a slot with ``ticket`` (the multicast path)."""
        slot: Slot[T] = Slot(ticket)
        # ``work`` is called inside the task: one cancelled before it ran leaves no coroutine
        # behind that was never awaited.
        task = asyncio.create_task(self._run(slot, work))
        self._held[task] = slot
        # Also when the task is cancelled before it ran, and so never reached its ``finally``.
        task.add_done_callback(self._end)

    async def _run(
        self, slot: Slot[T], work: Callable[[Slot[T]], Coroutine[Any, Any, None]]
    ) -> None:
        try:
            await work(slot)
        finally:
            slot.release()  # at once, as the session ends: not one loop turn later

    def _end(self, task: asyncio.Task[None]) -> None:
        slot = self._held.pop(task, None)
        if slot is not None:
            slot.release()

    @contextlib.contextmanager
    def hold(self, ticket: Ticket) -> Iterator[Slot[T]]:
        """The current task holds a slot with ``ticket`` until the block ends (the TCP
        listener, whose connection task is not ours to spawn)."""
        task = asyncio.current_task()
        assert task is not None
        slot: Slot[T] = Slot(ticket)
        self._held[task] = slot
        try:
            yield slot
        finally:
            self._end(task)

    async def idle(self) -> None:
        """Return once no session is in flight (sessions that start meanwhile included).

        Never await it from a session's own task: it would wait for itself."""
        while self._held:
            await asyncio.wait(list(self._held))

    async def drain(self, timeout: float, unknown: Callable[[T], Awaitable[None]]) -> int:
        """Wait up to ``timeout`` for the sessions in flight, then cut off the rest; returns how
        many were cut off. ``unknown`` is awaited first for each one that was acting."""
        pending = set(self._held)
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            slot = self._held.get(task)
            acting = slot._take_acting() if slot is not None else None
            if acting is not None:
                await unknown(acting)
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=CANCEL_GRACE)
        return len(still)
