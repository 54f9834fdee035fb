"""``CorosyncQuorum``: the ``QuorumSource`` following corosync 3 from the daemon's event loop.

Theory of operation:

- ``start()`` loads the libraries (by soname, once, through ``binding.load_library``) and
  connects: ``quorum_initialize`` with a v0 notify callback, ``quorum_fd_get``,
  ``quorum_getquorate``, ``quorum_trackstart(CHANGES|CURRENT)`` and ``loop.add_reader(fd)``. A
  readable fd means ``quorum_dispatch(CS_DISPATCH_ALL)``, which runs the notify callback on the
  loop thread. A QUORUM_FREE cluster is followed but never quorate (``status.build_status``).
- Each notification (and the connect itself) re-reads the cheap local details through
  ``details.HelperServices``; a failure there only leaves those fields empty.
- When corosync goes away the fd reports POLLHUP and dispatch returns CS_ERR_LIBRARY: the
  session is closed, the status becomes "not connected, not quorate", and a task reconnects
  with a doubling backoff until it succeeds. Nothing here raises out of the event loop.
- The event loop never sleeps. A busy corosync (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL) is asked
  again by a task awaiting the injected ``sleep``: up to ``TRY_AGAIN_ATTEMPTS`` times,
  ``TRY_AGAIN_STEP`` apart and growing. For a connect, a busy answer publishes nothing until the
  attempts are used up; for the details, bad news (or no news) is published at once with what
  is known, while a status that would newly be quorate waits for the re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from xvmd.quorum import NOT_CONNECTED, QuorumStatus
from xvmd.quorum.binding import CorosyncLibrary, load_library
from xvmd.quorum.corotypes import (
    CS_DISPATCH_ALL,
    CS_TRACK_CHANGES,
    CS_TRACK_CURRENT,
    CorosyncError,
)
from xvmd.quorum.details import HelperServices
from xvmd.quorum.status import (
    REASON_LOST,
    REASON_NO_LIBRARIES,
    REASON_STOPPED,
    Backoff,
    Observation,
    build_status,
    connect_failure_reason,
    disconnected_status,
    same_status,
    transition_message,
)

log = logging.getLogger("xvmd.quorum")

TRY_AGAIN_ATTEMPTS = 5  # tries of one connect or details read while corosync says it is busy
TRY_AGAIN_STEP = 0.02  # 20, 40, 60, 80 ms between them (0.2 s in all)


class _Attempt(enum.Enum):
    CONNECTED = "connected"
    FAILED = "failed"  # published (or kept) why; reconnect after the backoff
    BUSY = "busy"  # corosync said TRY_AGAIN: nothing published, try again shortly


@dataclass
class _Session:
    """One connection to corosync: the quorum handle, its latest values and the helpers."""

    quorum: int
    quorum_type: int
    fd: int
    quorate: bool
    helpers: HelperServices
    ring_seq: int | None = None
    view: tuple[int, ...] | None = None
    notified: bool = False  # a notification arrived since connect
    pending: bool = False  # a notification arrived during the current dispatch
    busy_reads: int = 0  # details reads in a row that found a helper service busy

    def observation(self) -> Observation:
        details = self.helpers.details
        return Observation(
            quorum_type=self.quorum_type,
            quorate=self.quorate,
            ring_seq=self.ring_seq,
            view=self.view,
            vote=details.vote,
            cluster=details.cluster,
            addresses=details.addresses,
            local_nodeid=details.local_nodeid,
        )


class CorosyncQuorum:
    """``QuorumSource`` following corosync 3 through its libraries.

    ``library`` returns the C layer (default: the real one, loaded in ``start()``);
    ``retry_initial``/``retry_max`` bound the reconnect backoff; ``clock`` stamps ``changed_at``;
    ``sleep`` waits between attempts, reconnects and busy retries alike (tests pass one that
    records the delays).
    """

    def __init__(
        self,
        library: Callable[[], CorosyncLibrary] = load_library,
        *,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._library_factory = library
        self._lib: CorosyncLibrary | None = None
        self._backoff = Backoff(retry_initial, retry_max)
        self._clock = clock
        self._sleep = sleep
        self._status = NOT_CONNECTED
        self._session: _Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reread_task: asyncio.Task[None] | None = None
        self._was_connected = False
        self._stopped = False
        self._connects = 0

    # QuorumSource

    def current(self) -> QuorumStatus:
        return self._status

    async def start(self) -> None:
        """Connect now, or keep retrying in the background; never raises."""
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        if self._lib is None:
            try:
                self._lib = self._library_factory()
            except (OSError, AttributeError) as e:
                log.debug("loading the corosync libraries: %s", e)
                self._publish(disconnected_status(REASON_NO_LIBRARIES, self._clock()))
                return
        attempt = self._connect(last_try=False)
        if attempt is not _Attempt.CONNECTED:
            self._schedule_reconnect(attempt)

    async def stop(self) -> None:
        self._stopped = True
        tasks = (self._reconnect_task, self._reread_task)
        self._reconnect_task = self._reread_task = None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._close_session()
        self._publish(disconnected_status(REASON_STOPPED, self._clock(), self._status))

    # read-only views, for diagnostics and tests

    @property
    def connects(self) -> int:
        """Successful connections so far."""
        return self._connects

    @property
    def reconnecting(self) -> bool:
        """A task is trying to (re)connect."""
        return self._reconnect_task is not None

    # connection

    def _connect(self, *, last_try: bool) -> _Attempt:
        """One connection attempt; publishes its outcome (unless BUSY: ``last_try`` False)."""
        lib, loop = self._lib, self._loop
        assert lib is not None and loop is not None
        try:
            session = self._open_session(lib, loop)
        except Exception as e:
            return self._connect_failed(e, last_try)
        self._session = session
        self._was_connected = True
        self._connects += 1
        self._backoff.reset()
        # CS_TRACK_CURRENT queues the first notification before trackstart returns: take it now
        # so the first published status already has the membership.
        if not self._dispatch(session):
            return _Attempt.FAILED  # lost again at once (and a reconnect is scheduled)
        if not session.notified:
            self._refresh(session)
        return _Attempt.CONNECTED

    def _open_session(self, lib: CorosyncLibrary, loop: asyncio.AbstractEventLoop) -> _Session:
        handle: int | None = None
        try:
            handle, quorum_type = lib.quorum_initialize(self._on_notify)
            fd = lib.quorum_fd_get(handle)
            quorate = lib.quorum_getquorate(handle)
            lib.quorum_trackstart(handle, CS_TRACK_CHANGES | CS_TRACK_CURRENT)
            loop.add_reader(fd, self._on_readable)
        except Exception:
            if handle is not None:
                with contextlib.suppress(Exception):
                    lib.quorum_finalize(handle)
            raise
        return _Session(handle, quorum_type, fd, quorate, HelperServices(lib))

    def _connect_failed(self, error: Exception, last_try: bool) -> _Attempt:
        """Say why (once), or nothing while corosync is busy starting up."""
        if not isinstance(error, CorosyncError):  # a bug, not corosync: say so, keep trying
            log.error("unexpected error while connecting to corosync", exc_info=error)
            reason = f"cannot connect to corosync (unexpected error: {error}); retrying"
        elif error.busy and not last_try:
            log.debug("connecting to corosync: %s (asking again shortly)", error)
            return _Attempt.BUSY
        elif error.busy and self._failed_before():
            log.debug("connecting to corosync: %s", error)
            return _Attempt.FAILED  # corosync is starting: keep the status we have
        else:
            log.debug("connecting to corosync failed: %s", error)
            reason = connect_failure_reason(error.code, self._was_connected)
        self._publish(disconnected_status(reason, self._clock(), self._status))
        return _Attempt.FAILED

    def _failed_before(self) -> bool:
        """Not connected, for a reason we already published (not just "not connected yet")."""
        return not self._status.connected and self._status.reason != NOT_CONNECTED.reason

    def _close_session(self) -> None:
        session, self._session = self._session, None
        reread, self._reread_task = self._reread_task, None
        if reread is not None:
            reread.cancel()  # it was for this session
        lib = self._lib
        if session is None or lib is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(session.fd)
        try:
            lib.quorum_finalize(session.quorum)
        except Exception as e:  # finalize after a lost connection may complain
            log.debug("corosync finalize: %s", e)
        session.helpers.close()

    def _lost(self, why: str) -> None:
        log.debug("corosync connection lost (%s)", why)
        self._close_session()
        self._publish(disconnected_status(REASON_LOST, self._clock(), self._status))
        self._schedule_reconnect(_Attempt.FAILED)

    def _schedule_reconnect(self, attempt: _Attempt) -> None:
        if self._stopped or self._reconnect_task is not None:
            return
        assert self._loop is not None
        self._reconnect_task = self._loop.create_task(self._reconnect(attempt))

    async def _reconnect(self, attempt: _Attempt) -> None:
        """Connect again: shortly after a busy answer, else after the backoff."""
        busy = 0  # busy answers in a row
        try:
            while not self._stopped:
                busy = busy + 1 if attempt is _Attempt.BUSY else 0
                await self._sleep(TRY_AGAIN_STEP * busy if busy else self._backoff.next())
                if self._stopped:
                    return
                attempt = self._connect(last_try=busy + 1 >= TRY_AGAIN_ATTEMPTS)
                if attempt is _Attempt.CONNECTED:
                    return
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    # events

    def _on_notify(self, quorate: bool, ring_seq: int, view: tuple[int, ...]) -> None:
        """Runs inside quorum_dispatch: only record; the refresh follows the dispatch."""
        session = self._session
        if session is None:
            return
        session.quorate = quorate
        session.ring_seq = ring_seq
        session.view = view
        session.notified = True
        session.pending = True

    def _dispatch(self, session: _Session) -> bool:
        """Dispatch pending callbacks; False when the connection is gone.

        Busy: the fd stays readable and the loop calls again on its next turn.
        """
        lib = self._lib
        assert lib is not None
        session.pending = False
        try:
            lib.quorum_dispatch(session.quorum, CS_DISPATCH_ALL)
        except CorosyncError as e:
            if not e.busy:
                self._lost(str(e))
                return False
        if session.pending:
            self._refresh(session)
        return True

    def _on_readable(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            self._dispatch(session)
        except Exception:
            log.exception("unexpected error while handling a corosync quorum event")
            if self._session is session:
                self._lost("unexpected error")

    # details

    def _refresh(self, session: _Session) -> None:
        """Re-read the details and publish; a busy helper service is read again shortly."""
        busy = session.helpers.read(session.view or ())
        status = build_status(session.observation(), self._clock())
        if busy and session.busy_reads + 1 < TRY_AGAIN_ATTEMPTS:
            session.busy_reads += 1
            self._schedule_reread(session, TRY_AGAIN_STEP * session.busy_reads)
            if status.quorate and not self._status.quorate:
                return  # good news waits (0.2 s at most) for the details; bad news never does
        else:
            session.busy_reads = 0
        self._publish(status)

    def _schedule_reread(self, session: _Session, delay: float) -> None:
        if self._reread_task is not None:
            return  # one re-read pending is enough
        assert self._loop is not None
        self._reread_task = self._loop.create_task(self._reread(session, delay))

    async def _reread(self, session: _Session, delay: float) -> None:
        try:
            await self._sleep(delay)
        finally:
            if self._reread_task is asyncio.current_task():
                self._reread_task = None
        if self._session is not session:
            return  # closed meanwhile
        try:
            self._refresh(session)
        except Exception:
            log.exception("unexpected error while re-reading corosync details")

    # publishing

    def _publish(self, status: QuorumStatus) -> None:
        old = self._status
        if same_status(old, status):
            return
        self._status = status
        message = transition_message(old, status)
        if message is not None:
            log.log(message[0], "%s", message[1])
