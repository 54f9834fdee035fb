"""``CpgGroup``: one corosync closed process group, followed from the daemon's event loop.

Theory of operation:

- ``start()`` loads libcpg (once, through the ``library`` factory) and connects:
  ``initialize``, ``fd``, ``local_nodeid``, ``join`` and ``loop.add_reader(fd)``. A readable fd
  means ``dispatch``; the C callbacks only record what they were given, and the events are
  handled in corosync's order once ``dispatch`` has returned, so no user code runs inside a C
  frame and a callback that raises is logged and skipped.
- The view (``GroupView``) is published through ``on_membership`` on every change: each
  confchg, and the loss of the connection. ``members`` are node ids, not processes: xvmd runs
  once per host, and the decisions are about hosts. The (nodeid, pid) pairs are kept
  (``processes``) so that a second process on a host (a restart overlapping its predecessor)
  still makes a new view, with the same node ids and a higher ``seq``.
- The group counts as joined (``view.connected``) from the first confchg that lists this node:
  corosync reports our own join before anything else of the group, so that view includes us.
- Messages are delivered to ``on_message`` in corosync's agreed order, our own included: every
  member applies the same sequence. ``send`` only queues; a sender task multicasts in order. A
  busy corosync (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL) is asked again after the injected
  ``sleep``, the message kept at the head. While not joined, sends are dropped and counted
  (``dropped_sends``): callers republish their state on every new view anyway.
- When corosync goes away (dispatch fails with CS_ERR_LIBRARY, which follows the fd's hang-up)
  the handle is finalized, queued sends are dropped, a disconnected view is published and a
  task reconnects with a doubling backoff. Nothing here raises out of the event loop, and the
  event loop never sleeps.
- Bounds: a payload has at most ``MAX_PAYLOAD`` bytes (``send`` raises ``ValueError`` beyond),
  and at most ``MAX_QUEUED_BYTES`` wait for a busy corosync (more are dropped and counted).
  libcpg sends a payload above 1 MiB - 1 KiB in fragments, each waiting for corosync's answer
  (and sleeping 10 ms in C while corosync is busy): keep the messages well below that.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from xvmd.hosts.cpgbinding import CpgLibrary, Members, load_cpg
from xvmd.quorum.corotypes import CorosyncError
from xvmd.quorum.status import Backoff

log = logging.getLogger("xvmd.hosts")

MAX_PAYLOAD = (1 << 20) - 4096
"""Bytes in one message: below the size where libcpg fragments a message and, on a busy
corosync, sleeps in C between fragments (on the event loop)."""
MAX_QUEUED_BYTES = 16 * MAX_PAYLOAD  # waiting for a busy corosync; more are dropped
MAX_NAME = 127  # bytes in a group name
TRY_AGAIN_ATTEMPTS = 5  # quick tries of a connect while corosync says it is busy
TRY_AGAIN_STEP = 0.02  # 20, 40, 60 ms ... between asks of a busy corosync
TRY_AGAIN_MAX = 0.5  # and never longer than this between the asks of one send
SENDS_PER_TURN = 64  # the sender lets the loop run after this many multicasts


@dataclass(frozen=True, slots=True)
class GroupView:
    """The group as this process sees it.

    ``connected``: joined, and the membership below is corosync's. ``members``: sorted node ids
    with an xvmd process in the group (this node included while connected; empty when not).
    ``seq``: grows by one with each view published, so views can be told apart and ordered.
    """

    connected: bool
    members: tuple[int, ...] = ()
    seq: int = 0


MessageFn = Callable[[int, bytes], None]
"""(sender nodeid, payload)."""

ViewFn = Callable[[GroupView], None]


class _Attempt(enum.Enum):
    CONNECTED = "connected"
    FAILED = "failed"  # reconnect after the backoff
    BUSY = "busy"  # corosync said TRY_AGAIN: ask again shortly


@dataclass
class _Deliver:
    nodeid: int
    payload: bytes


@dataclass
class _Confchg:
    members: Members  # who joined or left is in the difference; the view needs only this


@dataclass
class _Session:
    """One connection to corosync: the handle, its fd and the events its dispatch recorded."""

    handle: int
    fd: int
    nodeid: int
    events: list[_Deliver | _Confchg]
    in_group: bool = False  # a confchg listing this node arrived
    processes: frozenset[tuple[int, int]] = field(default_factory=frozenset)


def group_name(name: bytes | str) -> bytes:
    """The name as corosync sees it: 1 to ``MAX_NAME`` bytes (str is UTF-8 encoded)."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if not 0 < len(raw) <= MAX_NAME:
        raise ValueError(f"a CPG group name has 1 to {MAX_NAME} bytes, not {len(raw)}")
    return raw


class CpgGroup:
    """One CPG group on the event loop (see the module docstring).

    ``library`` returns the C layer (default: libcpg, loaded in ``start()``);
    ``retry_initial``/``retry_max`` bound the reconnect backoff; ``sleep`` waits between
    reconnects and busy retries alike (tests pass one that records the delays).
    """

    def __init__(
        self,
        name: bytes | str,
        on_message: MessageFn,
        on_membership: ViewFn,
        library: Callable[[], CpgLibrary] = load_cpg,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self._name = group_name(name)
        self._label = self._name.decode(errors="replace")  # for the log
        self._on_message = on_message
        self._on_membership = on_membership
        self._library_factory = library
        self._sleep = sleep
        self._backoff = Backoff(retry_initial, retry_max)
        self._lib: CpgLibrary | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: _Session | None = None
        self._view = GroupView(connected=False)
        self._local_nodeid: int | None = None
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._sender_task: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False
        self._connects = 0
        self._sent = 0
        self._dropped = 0
        self._overflowing = False

    # public surface

    @property
    def name(self) -> bytes:
        return self._name

    @property
    def view(self) -> GroupView:
        return self._view

    @property
    def local_nodeid(self) -> int | None:
        """This node's id, once a connection told it (kept while disconnected)."""
        return self._local_nodeid

    @property
    def processes(self) -> tuple[tuple[int, int], ...]:
        """(nodeid, pid) of every process in the group, sorted; empty while not joined."""
        session = self._session
        return tuple(sorted(session.processes)) if session and session.in_group else ()

    @property
    def sent(self) -> int:
        """Messages handed to corosync."""
        return self._sent

    @property
    def dropped_sends(self) -> int:
        """Messages given to ``send`` that were never handed to corosync."""
        return self._dropped

    @property
    def reconnects(self) -> int:
        """Connections made after the first one."""
        return max(0, self._connects - 1)

    @property
    def reconnecting(self) -> bool:
        """A task is trying to (re)connect."""
        return self._reconnect_task is not None

    async def start(self) -> None:
        """Connect and join now, or keep retrying in the background; never raises."""
        if self._started:
            return
        self._started, self._stopped = True, False
        self._loop = asyncio.get_running_loop()
        self._sender_task = self._loop.create_task(self._sender())
        if self._lib is None:
            try:
                self._lib = self._library_factory()
            except OSError as e:
                log.error("cannot follow the hosts' CPG group: %s", e)
                self._publish(GroupView(connected=False))
                return
        attempt = self._connect()
        if attempt is not _Attempt.CONNECTED:
            log.warning("cannot join CPG group %s yet; retrying", self._label)
            self._publish(GroupView(connected=False))
            self._schedule_reconnect(attempt)

    async def stop(self) -> None:
        """Leave the group and close the connection; safe to call more than once."""
        if not self._started:
            return
        self._started, self._stopped = False, True
        tasks = (self._reconnect_task, self._sender_task)
        self._reconnect_task = self._sender_task = None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        session = self._session
        if session is not None and self._lib is not None:
            with contextlib.suppress(Exception):  # finalize says goodbye anyway
                self._lib.leave(session.handle, self._name)
        self._close_session()
        self._drop_queue()
        if self._view.connected:
            self._publish(GroupView(connected=False))

    def send(self, payload: bytes) -> bool:
        """Queue ``payload`` for the group; False when it was dropped (not joined, or too much
        waiting). ``ValueError`` beyond ``MAX_PAYLOAD`` bytes."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"a CPG message has at most {MAX_PAYLOAD} bytes, not {len(payload)}")
        if not self._view.connected or self._stopped:
            self._dropped += 1
            return False
        if self._queued_bytes + len(payload) > MAX_QUEUED_BYTES:
            self._dropped += 1
            if not self._overflowing:
                log.warning("corosync is not taking CPG messages fast enough: dropping some")
                self._overflowing = True
            return False
        self._queue.append(bytes(payload))
        self._queued_bytes += len(payload)
        self._wake.set()
        return True

    # connection

    def _connect(self) -> _Attempt:
        lib, loop = self._lib, self._loop
        assert lib is not None and loop is not None
        try:
            session = self._open_session(lib, loop)
        except CorosyncError as e:
            log.debug("joining CPG group: %s", e)
            return _Attempt.BUSY if e.busy else _Attempt.FAILED
        except Exception:  # a bug, not corosync: say so, keep trying
            log.exception("unexpected error while joining the CPG group")
            return _Attempt.FAILED
        self._session = session
        self._local_nodeid = session.nodeid
        self._connects += 1
        self._backoff.reset()
        log.debug("joined CPG group %s as node %d", self._label, session.nodeid)
        return _Attempt.CONNECTED

    def _open_session(self, lib: CpgLibrary, loop: asyncio.AbstractEventLoop) -> _Session:
        events: list[_Deliver | _Confchg] = []

        def deliver(nodeid: int, _pid: int, payload: bytes) -> None:
            events.append(_Deliver(nodeid, payload))

        def confchg(members: Members, _left: Members, _joined: Members) -> None:
            events.append(_Confchg(members))

        handle = lib.initialize(deliver, confchg)
        try:
            fd = lib.fd(handle)
            session = _Session(handle, fd, lib.local_nodeid(handle), events)
            lib.join(handle, self._name)
            loop.add_reader(fd, self._on_readable, session)
        except Exception:
            with contextlib.suppress(Exception):
                lib.finalize(handle)
            raise
        return session

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is None or self._lib is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(session.fd)  # before finalize closes the fd
        try:
            self._lib.finalize(session.handle)
        except Exception as e:  # finalize after a lost connection may complain
            log.debug("cpg finalize: %s", e)

    def _lost(self, why: str) -> None:
        was_connected = self._view.connected
        log.warning("lost the CPG group (%s); reconnecting", why)
        self._close_session()
        self._drop_queue()
        if was_connected:
            self._publish(GroupView(connected=False))
        self._schedule_reconnect(_Attempt.FAILED)

    def _schedule_reconnect(self, attempt: _Attempt) -> None:
        if self._stopped or self._reconnect_task is not None:
            return
        assert self._loop is not None
        self._reconnect_task = self._loop.create_task(self._reconnect(attempt))

    async def _reconnect(self, attempt: _Attempt) -> None:
        """Connect again: shortly after a busy answer (a few times), else after the backoff."""
        busy = 0
        try:
            while not self._stopped:
                busy = busy + 1 if attempt is _Attempt.BUSY else 0
                quick = 0 < busy < TRY_AGAIN_ATTEMPTS
                await self._sleep(TRY_AGAIN_STEP * busy if quick else self._backoff.next())
                if self._stopped:
                    return
                attempt = self._connect()
                if attempt is _Attempt.CONNECTED:
                    return
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    # events

    def _on_readable(self, session: _Session) -> None:
        if self._session is not session or self._lib is None:
            return
        error: Exception | None = None
        try:
            self._lib.dispatch(session.handle)
        except CorosyncError as e:
            error = None if e.busy else e  # busy: the fd stays readable, asked again
        except Exception as e:
            log.exception("unexpected error while dispatching CPG events")
            error = e
        self._handle_events(session)  # those recorded before a failure happened all the same
        if error is not None and self._session is session:
            self._lost(str(error))

    def _handle_events(self, session: _Session) -> None:
        events = session.events[:]
        session.events.clear()
        for event in events:
            if self._session is not session:
                return  # lost or stopped by an earlier event's callback
            if isinstance(event, _Confchg):
                self._membership_changed(session, event)
            else:
                self._call(self._on_message, event.nodeid, event.payload)

    def _membership_changed(self, session: _Session, change: _Confchg) -> None:
        nodes = tuple(sorted({m.nodeid for m in change.members}))
        if session.nodeid not in nodes:
            if session.in_group:  # removed from our own group: rejoin from scratch
                self._lost("this node is no longer in the group")
            return  # not joined yet: not about us
        first = not session.in_group
        session.in_group = True
        session.processes = frozenset((m.nodeid, m.pid) for m in change.members)
        if first or nodes != self._view.members:
            log.info("CPG group %s: members %s", self._label, nodes)
        self._publish(GroupView(connected=True, members=nodes))

    def _publish(self, view: GroupView) -> None:
        self._view = GroupView(view.connected, view.members, self._view.seq + 1)
        self._call(self._on_membership, self._view)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("error in a CPG group callback (%s)", getattr(fn, "__name__", fn))

    # sending

    def _drop_queue(self) -> None:
        self._dropped += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0

    async def _sender(self) -> None:
        """Multicast the queued messages in order, the head kept while corosync is busy."""
        busy = 0
        turn = 0
        while not self._stopped:
            session = self._session
            if not self._queue or session is None or not session.in_group:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._multicast(session):
                busy = 0
                turn += 1
                if turn % SENDS_PER_TURN == 0:
                    await asyncio.sleep(0)  # let dispatch run between batches
            else:
                busy += 1
                await self._sleep(min(TRY_AGAIN_MAX, TRY_AGAIN_STEP * busy))

    def _multicast(self, session: _Session) -> bool:
        """Hand the head of the queue to corosync; False when corosync asks to wait."""
        assert self._lib is not None
        payload = self._queue[0]
        try:
            self._lib.mcast(session.handle, payload)
        except CorosyncError as e:
            if e.busy:
                return False
            if self._session is session:
                self._lost(str(e))  # dropped with the rest of the queue
            return True
        except Exception:
            log.exception("unexpected error while sending a CPG message: dropped")
            self._dropped += 1
        else:
            self._sent += 1
        self._queue.popleft()
        self._queued_bytes -= len(payload)
        if not self._queue:
            self._overflowing = False  # caught up: warn again next time
        return True
