"""An in-memory backend for unit tests of the fencing semantics and the daemon shell.

It models just enough of libvirt: persistent and transient domains, the states fencing cares
about, injectable failures and delays, and change events (``watch``: every call that changes a
domain tells the watcher afterwards, in the calling thread; ``events=False`` is a hypervisor
without events). Real behaviour is proven against libvirt's test driver.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from xvmd.backend import (
    BackendError,
    BackendUnavailable,
    DomainInfo,
    DomainNotFound,
    DomainState,
    match,
)


@dataclass
class FakeDomain:
    info: DomainInfo


class FakeBackend:
    description = "fake"

    def __init__(self, domains: list[DomainInfo] | None = None, *, events: bool = True) -> None:
        self._lock = threading.Lock()
        self.events = events
        self._changed: Callable[[], None] | None = None
        self._domains = {d.uuid: FakeDomain(d) for d in (domains or [])}
        self.available = True
        self.fail: dict[str, str] = {}  # primitive name -> error message
        self.delay: dict[str, float] = {}  # primitive name -> seconds
        self.destroy_leaves_state: DomainState | None = (
            None  # simulate a destroy that "succeeds" but does nothing
        )
        self.calls: list[tuple[str, str]] = []
        self._saved: dict[str, DomainInfo] = {}

    def _enter(self, name: str, arg: str = "") -> None:
        self.calls.append((name, arg))
        delay = self.delay.get(name)
        if delay:
            time.sleep(delay)
        if not self.available:
            raise BackendUnavailable("fake hypervisor is down")
        if name in self.fail:
            raise BackendError(self.fail[name])

    def _get(self, uuid: str) -> FakeDomain:
        try:
            return self._domains[uuid]
        except KeyError:
            raise DomainNotFound(f"no domain with uuid {uuid}") from None

    def _set(self, uuid: str, state: DomainState) -> None:
        dom = self._get(uuid)
        dom.info = replace(dom.info, state=state)

    def _notify(self) -> None:
        # After the change and outside the lock, as LibvirtBackend does.
        with self._lock:
            changed = self._changed
        if changed is not None:
            changed()

    # -- test helpers: the hypervisor changes behind the daemon's back ---------------------------

    def add_domain(self, info: DomainInfo) -> None:
        """Define (or replace) a domain."""
        with self._lock:
            self._domains[info.uuid] = FakeDomain(info)
        self._notify()

    def remove_domain(self, uuid: str) -> None:
        """Undefine a domain (or a transient one goes away)."""
        with self._lock:
            self._get(uuid)
            del self._domains[uuid]
        self._notify()

    def set_state(self, uuid: str, state: DomainState) -> None:
        """The domain changes state by itself (a crash, a guest shutdown, a pause)."""
        with self._lock:
            self._set(uuid, state)
        self._notify()

    # -- the Backend calls --------------------------------------------------------------------

    def ping(self) -> None:
        self._enter("ping")

    def list_domains(self) -> list[DomainInfo]:
        self._enter("list_domains")
        with self._lock:
            return [d.info for d in self._domains.values()]

    def lookup(self, target: str, *, exact: bool = False, uuid_only: bool = False) -> DomainInfo:
        # The same rules as LibvirtBackend.lookup (see Backend.lookup).
        self._enter("lookup", target)
        with self._lock:
            infos = [d.info for d in self._domains.values()]
        return match(infos, target, exact=exact, uuid_only=uuid_only)

    def state(self, uuid: str) -> DomainInfo | None:
        self._enter("state", uuid)
        with self._lock:
            dom = self._domains.get(uuid)
            return dom.info if dom else None

    def destroy(self, uuid: str) -> None:
        self._enter("destroy", uuid)
        with self._lock:
            dom = self._get(uuid)
            if dom.info.state is DomainState.SHUTOFF:
                raise BackendError("domain is not running")
            if self.destroy_leaves_state is not None:
                self._set(uuid, self.destroy_leaves_state)
            elif dom.info.persistent:
                self._set(uuid, DomainState.SHUTOFF)
            else:
                del self._domains[uuid]
        self._notify()

    def start(self, uuid: str) -> None:
        self._enter("start", uuid)
        with self._lock:
            if self._get(uuid).info.state is not DomainState.SHUTOFF:
                raise BackendError("domain is already running")
            self._set(uuid, DomainState.RUNNING)
        self._notify()

    def resume(self, uuid: str) -> None:
        self._enter("resume", uuid)
        with self._lock:
            self._set(uuid, DomainState.RUNNING)
        self._notify()

    def definition(self, uuid: str) -> str:
        self._enter("definition", uuid)
        with self._lock:
            info = self._get(uuid).info
            self._saved[info.uuid] = info
            return info.uuid

    def create_transient(self, xml: str) -> None:
        # The fake's "XML" is the UUID of a domain whose definition() was taken earlier.
        self._enter("create_transient", xml)
        with self._lock:
            info = self._saved[xml]
            self._domains[info.uuid] = FakeDomain(replace(info, state=DomainState.RUNNING))
        self._notify()

    def check_connection(self) -> bool:
        return self.available

    def watch(self, changed: Callable[[], None]) -> bool:
        with self._lock:
            self._changed = changed if self.events else None
        return self.events

    def unwatch(self) -> None:
        with self._lock:
            self._changed = None

    def watching(self) -> bool:
        with self._lock:
            return self._changed is not None

    def close(self) -> None:
        self.unwatch()
