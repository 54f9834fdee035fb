"""The hypervisor's domains as its lifecycle events last left them: queries are answered from
here, without a hypervisor call or a thread hop, while the event stream is healthy.

Rules:
1. Only queries: ``status`` and ``list`` may read the cache; a power action always asks the
   hypervisor and confirms its outcome there (``xvmd.core.operations``).
2. Never older than the events: every event empties the cache at once (on the loop, before
   anything else is answered), and the list read after it is kept only if no event came
   while it was being read. An answer from the cache is what a hypervisor call started at
   the last event would have said.
3. Only while events flow: a lost event connection empties the cache (the backend says so)
   and it stays empty until they flow again (``Backend.watching``); then requests ask the
   hypervisor as before. Where the hypervisor has no events there is no cache at all.
4. One subscription to the backend's events, shared: others (the host group's inventory)
   subscribe here, and hear of an event once the list read after it is in, so that they find
   it here instead of reading it again (or at once when no read will come, or it failed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from xvmd.backend import Backend, BackendError, DomainInfo
from xvmd.core.executor import BackendRunner, OutOfTime

log = logging.getLogger("xvmd")

WATCH_BUDGET = 10.0  # seconds to subscribe to (or drop) the hypervisor's events
READ_BUDGET = 10.0  # seconds for one read of the domain list


class DomainCache:
    def __init__(self, runner: BackendRunner) -> None:
        self.runner = runner
        self.backend: Backend = runner.backend
        self._domains: tuple[DomainInfo, ...] | None = None
        self._generation = 0  # grows with every event
        self._reader: asyncio.Task[None] | None = None
        self._subscribers: list[Callable[[], None]] = []
        self._owed = False  # an event the subscribers have not heard of yet
        self.events = False  # the hypervisor delivers events (``start`` found out)
        self.hits = 0
        self.misses = 0

    def subscribe(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` (on the loop) after every hypervisor event."""
        self._subscribers.append(changed)

    async def start(self) -> bool:
        """Subscribe to the hypervisor's events; False when it has none (no cache then)."""
        loop = asyncio.get_running_loop()

        def changed() -> None:  # in the backend's event thread
            loop.call_soon_threadsafe(self.changed)

        try:
            self.events = await self.runner.call(
                loop.time() + WATCH_BUDGET, self.backend.watch, changed
            )
        except OutOfTime:
            self.events = False
        if self.events:
            self._read_again()
        return self.events

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.events:
            loop = asyncio.get_running_loop()
            try:
                await self.runner.call(loop.time() + 2.0, self.backend.unwatch)
            except OutOfTime:
                log.warning("the hypervisor did not drop its event subscription in time")

    def changed(self) -> None:
        """A domain may have changed: forget the list now, read it again, tell subscribers."""
        self._generation += 1
        self._domains = None
        self._owed = True
        self._read_again()
        if not (self.events and self.backend.watching()):
            self._tell()  # no read will come

    def _tell(self) -> None:
        if self._owed:
            self._owed = False
            for subscriber in self._subscribers:
                subscriber()

    def refresh_if_empty(self) -> None:
        """Housekeeping: a read that failed (a hypervisor hiccup) is tried again."""
        if self.events and self._domains is None:
            self._read_again()

    def domains(self) -> tuple[DomainInfo, ...] | None:
        """The domains as of the last event, or None: ask the hypervisor instead."""
        if self._domains is None or not self.backend.watching():
            self.misses += 1
            return None
        self.hits += 1
        return self._domains

    def _read_again(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Read the list until one read saw no event go by (a burst costs two reads)."""
        try:
            await self._read_until_quiet()
        finally:
            self._tell()  # with the new list in, or so that they read for themselves

    async def _read_until_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        while self._domains is None and self.backend.watching():
            generation = self._generation
            try:
                listed = await self.runner.call(
                    loop.time() + READ_BUDGET, self.backend.list_domains
                )
            except (OutOfTime, BackendError) as exc:
                log.debug("domain list not read for the cache: %s", exc or "timed out")
                return  # the next event, or check_connection's, tries again
            if generation == self._generation:
                self._domains = tuple(listed)
