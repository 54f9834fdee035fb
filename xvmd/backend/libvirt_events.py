"""Domain lifecycle events for ``LibvirtBackend.watch``.

Rules:
1. libvirt's default event implementation is registered once per process, before the backend
   opens its first connection (a remote connection opened earlier never delivers events), and
   one daemon thread, ``libvirt-events``, serves it for good: once it is registered libvirtd
   sends keepalive pings that must be answered even while nobody watches. With nothing to do
   the thread blocks in poll, so an idle loop costs no CPU.
2. Events come on a connection of their own, not one of the pool's: a slow request never
   delays them, and the pool's reconnect logic stays as it is. The in-process test driver is
   the exception: its state lives in the backend's one shared connection.
3. ``changed`` is called from the event thread, or from the thread running ``check``; never
   while a lock guarding state is held, and never after ``stop`` has returned.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from xvmd.backend import BackendError

log = logging.getLogger("xvmd.libvirt")

KEEPALIVE_INTERVAL = 5
"""Seconds between keepalive pings on a dedicated event connection."""
KEEPALIVE_COUNT = 3
"""Unanswered pings after which libvirt closes it (and the close callback marks it lost)."""
_LOOP_RETRY = 1.0
_SETTLE_TIMEOUT = 2.0

_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "end of file",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
}

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and start its thread, once per process."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _loop_thread = threading.Thread(target=_serve, name="libvirt-events", daemon=True)
        _loop_thread.start()


def _serve() -> None:
    pause = threading.Event()
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError as exc:
            log.error("libvirt event loop: %s", exc)
            pause.wait(_LOOP_RETRY)  # never spin on a loop that keeps failing


def settle(timeout: float = _SETTLE_TIMEOUT) -> None:
    """Return once the event thread is past the dispatch under way, if any.

    A callback deregistered during its dispatch is only marked; libvirt lets go of it, and of
    the connection it holds, when the dispatch ends. Without this wait a closed connection can
    outlive ``close`` for a moment (and the test driver's state with it).
    """
    if _loop_thread is None or threading.current_thread() is _loop_thread:
        return
    passed = threading.Event()

    def mark(timer: int, _opaque: object) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            libvirt.virEventRemoveTimeout(timer)
        passed.set()

    # A zero timeout fires on the loop's next iteration: after the dispatch under way.
    libvirt.virEventAddTimeout(0, mark, None)
    if not passed.wait(timeout):
        log.warning("the libvirt event thread is busy for more than %gs", timeout)


class _Outcome(enum.Enum):
    SUBSCRIBED = "subscribed"
    UNREACHABLE = "unreachable"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class _Subscription:
    conn: Any
    callback_id: int


class LifecycleWatch:
    """Calls ``changed`` on every lifecycle event of one hypervisor.

    ``connect`` opens (or, shared, borrows) the connection events come on; ``usable`` says
    whether a subscribed connection still works; ``dedicated`` connections are the watch's own
    (keepalive on, closed when let go), a shared one belongs to the backend's pool.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        usable: Callable[[Any], bool],
        *,
        dedicated: bool,
    ) -> None:
        self._connect = connect
        self._usable = usable
        self._dedicated = dedicated
        self._setup = threading.Lock()  # start/stop/check, the blocking steps, one at a time
        self._state = threading.Lock()  # what the event thread reads; held only briefly
        self._dispatch = threading.RLock()  # held while changed runs, so stop can wait it out
        self._changed: Callable[[], None] | None = None
        self._generation = 0  # callbacks of an older subscription are ignored
        self._lost = False
        self._sub: _Subscription | None = None  # guarded by _setup
        self._failing = False  # guarded by _setup: the failure to subscribe was logged

    def start(self, changed: Callable[[], None]) -> bool:
        """Deliver events to ``changed``; False when the hypervisor cannot deliver any.

        An unreachable hypervisor is not "cannot": ``check`` subscribes once it is back.
        """
        with self._setup:
            with self._state:
                self._changed = changed
            if self._sub is not None or self._subscribe() is not _Outcome.UNSUPPORTED:
                return True
            with self._state:
                self._changed = None
            return False

    @property
    def healthy(self) -> bool:
        """Subscribed, and the connection not known to be lost (no hypervisor call)."""
        with self._state:
            return self._changed is not None and self._sub is not None and not self._lost

    def stop(self) -> None:
        """No ``changed`` call after this returns; drops the event connection. Idempotent."""
        with self._setup:
            with self._state:
                self._changed = None
            released = self._unsubscribe()
        if released:
            settle()
        with self._dispatch:
            pass  # a call of changed under way (from check) ends before we return

    def check(self) -> None:
        """Re-subscribe after the event connection was lost, then call ``changed`` once."""
        with self._setup:
            with self._state:
                if self._changed is None:
                    return
                lost = self._lost
            sub = self._sub
            if sub is not None and not lost and self._usable(sub.conn):
                return
            if sub is not None and not lost:  # a close callback has said so already
                log.warning("libvirt event connection stopped answering; re-opening it")
            self._unsubscribe()
            outcome = self._subscribe()
        if outcome is _Outcome.UNREACHABLE:
            return
        # Events may have been missed meanwhile (or cannot come at all: then every check is a
        # "may have changed", a slow poll that beats silence).
        self._notify(None)

    # -- subscription (under _setup) -----------------------------------------------------------

    def _subscribe(self) -> _Outcome:
        try:
            conn = self._connect()
        except (libvirt.libvirtError, BackendError) as exc:
            return self._failed(f"cannot open the libvirt event connection: {_text(exc)}")
        with self._state:
            self._generation += 1
            generation = self._generation
            self._lost = False
        try:
            if self._dedicated:
                _keepalive(conn)
            conn.registerCloseCallback(self._closed, generation)
            callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, generation
            )
        except libvirt.libvirtError as exc:
            self._release(conn, None)
            outcome = self._failed(f"cannot subscribe to libvirt domain events: {_text(exc)}")
            unsupported = exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
            return _Outcome.UNSUPPORTED if unsupported else outcome
        self._sub = _Subscription(conn, callback_id)
        if self._failing:
            log.info("libvirt domain events flow again")
        self._failing = False
        return _Outcome.SUBSCRIBED

    def _failed(self, why: str) -> _Outcome:
        if not self._failing:
            log.warning("%s", why)
        self._failing = True
        return _Outcome.UNREACHABLE

    def _unsubscribe(self) -> bool:
        sub, self._sub = self._sub, None
        with self._state:
            self._generation += 1  # late callbacks of the old connection are ignored
            self._lost = False
        if sub is None:
            return False
        self._release(sub.conn, sub.callback_id)
        return True

    def _release(self, conn: Any, callback_id: int | None) -> None:
        # Both callbacks hold a reference to the connection: without deregistering them first
        # a close would leave it open for good. libvirt drops them locally even when the
        # connection is dead and the call fails (best effort, then).
        if callback_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        if self._dedicated:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    # -- callbacks (event thread) --------------------------------------------------------------

    def _event(self, _conn: Any, _dom: Any, _event: int, _detail: int, generation: int) -> None:
        # Every lifecycle event may change the inventory; a migration is one of them (started,
        # stopped, suspended or resumed with a "migrated" detail).
        self._notify(generation)

    def _closed(self, _conn: Any, reason: int, generation: int) -> None:
        with self._state:
            if generation != self._generation:
                return
            self._lost = True
        why = _CLOSE_REASONS.get(reason, str(reason))
        log.warning("libvirt event connection closed (%s); events resume after a reconnect", why)
        # Whoever keeps state from events must stop trusting it now, not at the reconnect.
        self._notify(generation)

    def _notify(self, generation: int | None) -> None:
        with self._dispatch:
            with self._state:
                changed = self._changed
                if generation is not None and generation != self._generation:
                    changed = None
            if changed is None:
                return
            try:
                changed()
            except Exception:
                log.exception("the domain change callback failed")


def _keepalive(conn: Any) -> None:
    """Let libvirt notice a dead or wedged libvirtd on an otherwise quiet connection."""
    try:
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # local drivers have none
            log.debug("no keepalive on the libvirt event connection: %s", _text(exc))


def alive(conn: Any) -> bool:
    """A dedicated connection still works: open, and a real round trip succeeds."""
    try:
        return bool(conn.isAlive()) and conn.getLibVersion() > 0
    except libvirt.libvirtError:
        return False


def _text(exc: Exception) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return str(exc.get_error_message() or exc).strip()
    return str(exc)
