"""The libvirt backend: a small pool of long-lived connections, each re-opened when it is lost.

Rules:
1. With ``libvirt_events``, the only importer of ``libvirt``; every ``libvirtError`` leaves as
   a ``BackendError``.
2. Long-lived connections, not one per call (reconnecting per request is slow): a small
   pool, so concurrent calls never queue behind each other on one connection, except for
   the in-process ``test:///`` driver, which keeps its domains' state in its one connection.
3. A call that fails because the connection died drops it; the next call (or the daemon's
   background check) opens a new one. Calls never wait for libvirtd to come back.
4. Domain events (``watch``) live in ``libvirt_events``, on a connection of their own; the
   event implementation is registered before this class opens its first connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from xvmd.backend import (
    AmbiguousDomain,
    BackendError,
    BackendUnavailable,
    DomainInfo,
    DomainNotFound,
    DomainState,
    exact_match,
    is_uuid,
)
from xvmd.backend.libvirt_events import LifecycleWatch, alive, ensure_event_loop

log = logging.getLogger("xvmd.libvirt")
T = TypeVar("T")

_CONNECTION_ERRORS = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_AUTH_FAILED,
}
_CONNECT_LOCK_TIMEOUT = 5.0


def _silence_libvirt(_ctx: object, _err: object) -> None:
    # libvirt prints every error to stderr by default; we report them ourselves, once.
    return None


libvirt.registerErrorHandler(_silence_libvirt, None)


def _is_connection_error(err: libvirt.libvirtError) -> bool:
    code = err.get_error_code()
    return code in _CONNECTION_ERRORS or err.get_error_domain() == libvirt.VIR_FROM_RPC


def _message(err: libvirt.libvirtError) -> str:
    return str(err.get_error_message() or err).strip()


def _absent_as_none(find: Callable[[str], Any], key: str) -> Any:
    """``find(key)``, or None when libvirt says there is no such domain."""
    try:
        return find(key)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
        return None


def _loose_match(conn: Any, target: str) -> Any:
    """Exact name, else the one domain whose name matches case-insensitively."""
    named = _absent_as_none(conn.lookupByName, target)
    if named is not None:
        return named
    # Cluster node names and VM names often differ only in case; accept a unique match.
    wanted = target.casefold()
    hits = [d for d in conn.listAllDomains(0) if d.name().casefold() == wanted]
    if len(hits) == 1:
        return hits[0]
    if hits:
        # Ambiguous is not "absent": answering OFF here could hide a running VM.
        names = ", ".join(sorted(d.name() for d in hits))
        raise AmbiguousDomain(f"{target!r} is ambiguous: matches {names}")
    raise DomainNotFound(f"no domain named {target!r}")


def shares_state_in_process(uri: str) -> bool:
    """``test:///...`` keeps its domains inside the connection: only one may exist."""
    scheme = uri.split(":", 1)[0]
    return scheme == "test"


class LibvirtBackend:
    """Connections to one hypervisor URI.

    A call borrows an idle connection from a small pool (opening one only when none is idle)
    and returns it afterwards: on one shared connection libvirt answered a status lookup for
    domain B only after a concurrent destroy/create of domain A (100-500 ms, seen with QEMU
    under a private libvirtd), which is head-of-line blocking again. ``check_connection``
    keeps ``spare`` connections open, so a request rarely pays for opening one. The in-process
    test driver is the exception: its state lives in its one connection, used by all calls.
    """

    def __init__(
        self, uri: str, opener: Callable[[str], Any] | None = None, spare: int = 2
    ) -> None:
        self.uri = uri
        self.description = f"libvirt {uri}"
        self._open = opener or libvirt.open
        self._shared = shares_state_in_process(uri)
        self._spare = 1 if self._shared else spare
        self._lock = threading.Lock()
        self._connecting = threading.Lock()  # the one shared connection is opened once
        self._idle: list[Any] = []
        self._all: list[Any] = []
        self.last_error: str | None = None
        # Before any open: a connection opened without it never delivers events.
        ensure_event_loop()
        if self._shared:
            self._events = LifecycleWatch(self._borrow, self._is_shared, dedicated=False)
        else:
            self._events = LifecycleWatch(lambda: self._open(self.uri), alive, dedicated=True)

    # -- connection management --------------------------------------------------------------

    def _new_connection(self) -> Any:
        try:
            conn = self._open(self.uri)
        except libvirt.libvirtError as exc:
            with self._lock:
                self.last_error = _message(exc)
            raise BackendUnavailable(f"cannot connect to {self.uri}: {_message(exc)}") from exc
        with self._lock:
            self._all.append(conn)
            if self.last_error is not None:
                log.warning("libvirt connection to %s re-established", self.uri)
            self.last_error = None
        return conn

    def _borrow(self) -> Any:
        with self._lock:
            if self._shared and self._all:
                return self._all[0]
            if self._idle:
                return self._idle.pop()
        if not self._shared:
            return self._new_connection()
        # Only one connection may ever exist: a second caller waits for the first one's open.
        if not self._connecting.acquire(timeout=_CONNECT_LOCK_TIMEOUT):
            raise BackendUnavailable(f"still connecting to {self.uri}")
        try:
            with self._lock:
                if self._all:
                    return self._all[0]
            return self._new_connection()
        finally:
            self._connecting.release()

    def _is_shared(self, conn: Any) -> bool:
        with self._lock:
            return bool(self._all) and self._all[0] is conn

    def _give_back(self, conn: Any) -> None:
        with self._lock:
            if not self._shared and conn in self._all:
                self._idle.append(conn)

    def _drop(self, conn: Any, why: str) -> None:
        # A dead libvirtd kills every connection: drop them all, not just this one.
        with self._lock:
            if conn not in self._all:
                return
            dead = list(self._all)
            self._all.clear()
            self._idle.clear()
            if self.last_error is None:
                log.warning("libvirt connection to %s lost: %s; reconnecting", self.uri, why)
            self.last_error = why
        for c in dead:
            with contextlib.suppress(libvirt.libvirtError):
                c.close()

    def _call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)``; retry once on a fresh connection if the old one turned out dead."""
        for attempt in (1, 2):
            conn = self._borrow()
            try:
                result = fn(conn)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    self._give_back(conn)
                    raise DomainNotFound(_message(exc)) from exc
                if not _is_connection_error(exc):
                    self._give_back(conn)
                    raise BackendError(_message(exc)) from exc
                self._drop(conn, _message(exc))
                if attempt == 2:
                    raise BackendUnavailable(f"{self.uri}: {_message(exc)}") from exc
                continue
            except BaseException:
                self._give_back(conn)
                raise
            self._give_back(conn)
            return result
        raise AssertionError("unreachable")

    def check_connection(self) -> bool:
        """Ping (reconnecting if needed), keep the spare connections open, and re-open a lost
        event connection (telling the watcher once: events may have been missed)."""
        try:
            self.ping()
            with self._lock:
                missing = self._spare - len(self._idle) if not self._shared else 0
            for _ in range(max(missing, 0)):
                self._give_back(self._new_connection())
        except BackendError:
            return False
        self._events.check()
        return True

    def warm_up(self) -> None:
        """Open the connections in a thread of their own while the daemon is still starting.

        libvirt releases the GIL while it connects, and opening can take longer than
        everything else in a start (the test driver parses its whole file, 0.3 s for 2,000
        domains), so the two overlap. Failure is left to the daemon's own first check.
        """
        threading.Thread(target=self.check_connection, name="libvirt-warm-up", daemon=True).start()

    def watch(self, changed: Callable[[], None]) -> bool:
        return self._events.start(changed)

    def watching(self) -> bool:
        return self._events.healthy

    def unwatch(self) -> None:
        self._events.stop()

    def close(self) -> None:
        self._events.stop()  # first: the shared connection must still be open to deregister
        with self._lock:
            conns = list(self._all)
            self._all.clear()
            self._idle.clear()
        for conn in conns:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    # -- primitive calls ----------------------------------------------------------------------

    def ping(self) -> None:
        self._call(lambda c: c.getLibVersion())

    @staticmethod
    def _info(dom: Any) -> DomainInfo:
        state, _reason = dom.state()
        return DomainInfo(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=DomainState.of(state),
            persistent=bool(dom.isPersistent()),
        )

    def list_domains(self) -> list[DomainInfo]:
        def run(conn: Any) -> list[DomainInfo]:
            # One call for every domain's state (a remote connection would otherwise make one
            # round trip per domain); name and UUID are cached in the domain objects.
            try:
                stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                stats = [(d, {"state.state": d.state()[0]}) for d in conn.listAllDomains(0)]
            return [
                DomainInfo(dom.name(), dom.UUIDString(), DomainState.of(st.get("state.state", 0)))
                for dom, st in stats
            ]

        return self._call(run)

    def _domain(self, conn: Any, uuid: str) -> Any:
        return conn.lookupByUUIDString(uuid)

    def lookup(self, target: str, *, exact: bool = False, uuid_only: bool = False) -> DomainInfo:
        def run(conn: Any) -> DomainInfo:
            if uuid_only or (is_uuid(target) and not exact):
                if not is_uuid(target):
                    raise DomainNotFound(f"{target!r} is no UUID")
                return self._info(conn.lookupByUUIDString(target))
            if exact:
                named = _absent_as_none(conn.lookupByName, target)
                by_uuid = (
                    _absent_as_none(conn.lookupByUUIDString, target) if is_uuid(target) else None
                )
                return exact_match(
                    target,
                    self._info(named) if named is not None else None,
                    self._info(by_uuid) if by_uuid is not None else None,
                )
            return self._info(_loose_match(conn, target))

        return self._call(run)

    def state(self, uuid: str) -> DomainInfo | None:
        try:
            return self._call(lambda c: self._info(self._domain(c, uuid)))
        except DomainNotFound:
            return None

    def destroy(self, uuid: str) -> None:
        self._call(lambda c: self._domain(c, uuid).destroy())

    def start(self, uuid: str) -> None:
        self._call(lambda c: self._domain(c, uuid).create())

    def resume(self, uuid: str) -> None:
        def run(conn: Any) -> None:
            dom = self._domain(conn, uuid)
            state, _reason = dom.state()
            if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                dom.pMWakeup(0)
            else:
                dom.resume()

        self._call(run)

    def definition(self, uuid: str) -> str:
        return self._call(
            lambda c: str(self._domain(c, uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
        )

    def create_transient(self, xml: str) -> None:
        self._call(lambda c: c.createXML(xml, 0))
