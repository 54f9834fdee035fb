"""Runs blocking backend work off the event loop, without head-of-line blocking.

Rules:
1. Every backend call runs in the worker pool, never on the event loop.
2. Operations on one domain run one at a time, in arrival order; different domains run in
   parallel. A domain's lock is held until its worker really finishes, even after the request
   that started it gave up waiting, so a hung call is never overtaken by a second one.
3. Every await has a deadline: a request fails within its budget instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from xvmd.backend import Backend, BackendError, DomainInfo, DomainNotFound, match
from xvmd.core import operations
from xvmd.core.operations import Clock, Outcome
from xvmd.protocol.wire import HostRecord, Op, Result

T = TypeVar("T")


class Known(Protocol):
    """Where queries may find the domains without asking the hypervisor (``DomainCache``)."""

    def domains(self) -> tuple[DomainInfo, ...] | None: ...


log = logging.getLogger("xvmd")

POWER_BUDGET = 25.0
"""Seconds a power action may take before the client is told it failed (client default: 30)."""
QUERY_BUDGET = 10.0
"""Seconds for status, monitor and list."""
RESULT_MARGIN = 0.5
"""Seconds kept free at the end of a budget to deliver the result."""


def _log_late(op: Op, dom: DomainInfo, fut: asyncio.Future[Outcome]) -> None:
    """The client was told FAIL already; the operator still learns what finally happened."""
    if fut.cancelled():
        return
    exc = fut.exception()
    outcome = f"error {exc}" if exc else f"{fut.result().result.label}: {fut.result().detail}"
    log.warning(
        "late result of %s on %s (client already told failed): %s", op.label, dom.name, outcome
    )


class OutOfTime(Exception):
    """The budget ran out before the backend answered."""


class _DomainLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class BackendRunner:
    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        workers: int = 32,
        confirm_timeout: float = operations.CONFIRM_TIMEOUT,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._confirm_timeout = confirm_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="backend")
        self._locks: dict[str, _DomainLock] = {}
        self.known: Known | None = None  # queries read it when it has the domains

    @property
    def held_domains(self) -> frozenset[str]:
        """UUIDs of the domains whose lock is held or awaited right now (empty when idle)."""
        return frozenset(self._locks)

    def budget_for(self, op: Op) -> float:
        return POWER_BUDGET if op.is_power_action else QUERY_BUDGET

    async def _run(self, deadline: float, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args))
        try:
            # asyncio.timeout, not wait_for: wait_for makes a task per call (Python 3.11).
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise OutOfTime() from None

    async def call(self, deadline: float, fn: Callable[..., T], *args: object) -> T:
        """Any other blocking backend call, in the pool, within ``deadline`` (OutOfTime)."""
        return await self._run(deadline, fn, *args)

    async def hostlist(self, deadline: float) -> list[HostRecord]:
        """Raises OutOfTime or BackendError."""
        known = self.known.domains() if self.known is not None else None
        if known is not None:
            return [HostRecord(d.name, d.uuid, int(d.state)) for d in known]
        return await self._run(deadline, operations.host_records, self.backend)

    async def check_connection(self, deadline: float) -> bool:
        try:
            return await self._run(deadline, self.backend.check_connection)
        except OutOfTime:
            return False

    async def fence(
        self,
        op: Op,
        target: str,
        deadline: float,
        allowed: Callable[[DomainInfo | None], bool] | None = None,
        *,
        exact: bool = False,
        uuid_only: bool = False,
    ) -> Outcome:
        """Resolve ``target`` and carry out ``op``, serialised per domain, within ``deadline``.

        ``allowed`` gets the resolved domain (None: not found) and may refuse it (PERM).
        ``exact`` and ``uuid_only`` choose how the target is matched (``Backend.lookup``).
        """
        budget = deadline - asyncio.get_running_loop().time()
        known = self.known.domains() if op is Op.STATUS and self.known is not None else None
        if known is not None:
            return self._status_of(known, target, allowed, exact, uuid_only)
        try:
            if not op.needs_domain:
                return await self._run(deadline, self._perform, op, None, deadline)
            find = functools.partial(operations.resolve, exact=exact, uuid_only=uuid_only)
            dom = await self._run(deadline, find, self.backend, target)
            if allowed is not None and not allowed(dom):
                what = f"domain {dom.name}" if dom else f"{target!r} (no such domain)"
                return Outcome(Result.PERM, f"{what} belongs to no cluster node of this device")
            if dom is None or not op.is_power_action:
                # Status only reads: it needs no lock, so it never waits behind a slow power
                # action on the same domain.
                return operations.perform(self.backend, op, dom, self._clock)
            return await self._fence_domain(op, dom, deadline)
        except OutOfTime:
            return Outcome(Result.FAIL, f"no answer from the hypervisor within {budget:g}s")
        except BackendError as exc:
            return Outcome(Result.FAIL, f"hypervisor error: {exc}")

    def _status_of(
        self,
        known: tuple[DomainInfo, ...],
        target: str,
        allowed: Callable[[DomainInfo | None], bool] | None,
        exact: bool,
        uuid_only: bool,
    ) -> Outcome:
        """A status from the domains the events left (no hypervisor call, no thread)."""
        try:
            dom: DomainInfo | None = match(known, target, exact=exact, uuid_only=uuid_only)
        except DomainNotFound:
            dom = None
        except BackendError as exc:  # ambiguous: not "absent"
            return Outcome(Result.FAIL, f"hypervisor error: {exc}")
        if allowed is not None and not allowed(dom):
            what = f"domain {dom.name}" if dom else f"{target!r} (no such domain)"
            return Outcome(Result.PERM, f"{what} belongs to no cluster node of this device")
        return operations.perform(self.backend, Op.STATUS, dom, self._clock)

    def _perform(self, op: Op, dom: DomainInfo | None, deadline: float) -> Outcome:
        # Runs in a worker, after this domain's lock was taken: re-read the state, since a
        # previous operation on the same domain may just have changed it.
        if dom is not None:
            dom = self.backend.state(dom.uuid)
        # Finish waiting a little before the request's deadline, so the honest answer (not a
        # timeout) reaches the client.
        wait = min(self._confirm_timeout, deadline - self._clock.now() - RESULT_MARGIN)
        return operations.perform(self.backend, op, dom, self._clock, max(wait, 0.0))

    async def _fence_domain(self, op: Op, dom: DomainInfo, deadline: float) -> Outcome:
        loop = asyncio.get_running_loop()
        entry = self._locks.setdefault(dom.uuid, _DomainLock())
        entry.users += 1

        def leave() -> None:
            entry.users -= 1
            if entry.users == 0 and not entry.lock.locked() and self._locks.get(dom.uuid) is entry:
                del self._locks[dom.uuid]

        def release() -> None:
            entry.lock.release()
            leave()

        try:
            async with asyncio.timeout_at(deadline):
                await entry.lock.acquire()
        except TimeoutError:
            leave()
            return Outcome(Result.FAIL, "an earlier operation on this domain is still running", dom)
        except BaseException:
            leave()
            raise
        # From here the lock is released only when the worker has really finished.
        fut = loop.run_in_executor(self._pool, self._perform, op, dom, deadline)
        fut.add_done_callback(lambda _f: release())
        try:
            async with asyncio.timeout_at(deadline):
                outcome = await asyncio.shield(fut)
        except TimeoutError:
            fut.add_done_callback(functools.partial(_log_late, op, dom))
            return Outcome(
                Result.FAIL, "timed out waiting for the hypervisor; the operation continues", dom
            )
        return Outcome(outcome.result, outcome.detail, outcome.domain or dom)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
