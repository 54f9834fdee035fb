"""An in-memory corosync CPG behind the ``CpgLibrary`` seam, shared by several nodes.

``FakeCpgCluster`` is "corosync on every node": ``library(nodeid)`` is one node's libcpg, and
each connection (handle) gets a socketpair: the group watches one end as it would the libqb IPC
socket, the fake writes a byte to the other when an event is queued and closes it when that
node's corosync is killed, so the event loop sees the same readable-then-CS_ERR_LIBRARY
sequence as with the real one.

Like corosync: multicasts are queued to every joined connection of the group in one total
order (the order of the ``mcast`` calls), the sender included; a join, leave or death queues a
confchg to the connections in the group (the joiner included: its first confchg lists itself);
members carry reason 0, the joined/left lists the CPG_REASON_*.
"""

from __future__ import annotations

import functools
import itertools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from xvmd.hosts.cpgbinding import (
    CPG_REASON_JOIN,
    CPG_REASON_LEAVE,
    CPG_REASON_NODEDOWN,
    CPG_REASON_PROCDOWN,
    ConfchgFn,
    CpgAddress,
    DeliverFn,
)
from xvmd.quorum.corotypes import (
    CS_ERR_BAD_HANDLE,
    CS_ERR_LIBRARY,
    CS_ERR_NOT_EXIST,
    CS_ERR_TRY_AGAIN,
    CorosyncError,
)

Event = Callable[[], None]  # a queued callback, run by dispatch


@dataclass
class _Conn:
    nodeid: int
    pid: int
    deliver: DeliverFn
    confchg: ConfchgFn
    daemon_end: socket.socket
    fake_end: socket.socket | None
    group: bytes | None = None
    pending: list[Event] = field(default_factory=list)


class FakeCpgCluster:
    """Corosync on several nodes; see the module docstring."""

    def __init__(self) -> None:
        self.down: set[int] = set()  # nodes whose corosync is not running
        self.busy: dict[str, int] = {}  # call name -> how many more times to say TRY_AGAIN
        self.fail: dict[str, int] = {}  # call name -> cs_error to raise (until removed)
        self.calls: list[tuple[int, str]] = []  # (nodeid, call)
        self.delivered: list[tuple[int, bytes]] = []  # the total order: (sender nodeid, payload)
        self.conns: dict[int, _Conn] = {}
        self._handles = itertools.count(0x1000)
        self._pids = itertools.count(4000)

    # test controls

    def library(self, nodeid: int) -> FakeCpg:
        return FakeCpg(self, nodeid)

    def kill(self, nodeid: int) -> None:
        """Corosync on ``nodeid`` dies: its connections hang up; the other nodes see NODEDOWN."""
        self.down.add(nodeid)
        for handle, conn in list(self.conns.items()):
            if conn.nodeid != nodeid:
                continue
            if conn.fake_end is not None:
                conn.fake_end.close()
                conn.fake_end = None
            self._remove(handle, CPG_REASON_NODEDOWN, tell_self=False)

    def restart(self, nodeid: int) -> None:
        self.down.discard(nodeid)

    def count(self, call: str, nodeid: int | None = None) -> int:
        return sum(1 for n, c in self.calls if c == call and nodeid in (None, n))

    def members(self, group: bytes) -> list[tuple[int, int]]:
        return sorted((c.nodeid, c.pid) for c in self.conns.values() if c.group == group)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.daemon_end.close()
            if conn.fake_end is not None:
                conn.fake_end.close()
        self.conns.clear()

    # the calls (FakeCpg forwards here with its node id)

    def enter(self, nodeid: int, call: str) -> None:
        self.calls.append((nodeid, call))
        if call in self.fail:
            raise CorosyncError(call, self.fail[call])
        if self.busy.get(call, 0) > 0:
            self.busy[call] -= 1
            raise CorosyncError(call, CS_ERR_TRY_AGAIN)
        if nodeid in self.down:
            raise CorosyncError(call, CS_ERR_LIBRARY)

    def conn(self, handle: int, call: str) -> _Conn:
        conn = self.conns.get(handle)
        if conn is None:
            raise CorosyncError(call, CS_ERR_BAD_HANDLE)
        return conn

    def initialize(self, nodeid: int, deliver: DeliverFn, confchg: ConfchgFn) -> int:
        self.enter(nodeid, "initialize")
        daemon_end, fake_end = socket.socketpair()
        daemon_end.setblocking(False)
        handle = next(self._handles)
        pid = next(self._pids)
        self.conns[handle] = _Conn(nodeid, pid, deliver, confchg, daemon_end, fake_end)
        return handle

    def join(self, handle: int, name: bytes) -> None:
        conn = self.conn(handle, "join")
        if conn.group is not None:
            raise CorosyncError("join", CS_ERR_NOT_EXIST)
        conn.group = name
        me = CpgAddress(conn.nodeid, conn.pid, CPG_REASON_JOIN)
        self._confchg(name, left=(), joined=(me,))

    def leave(self, handle: int) -> None:
        self._remove(handle, CPG_REASON_LEAVE, tell_self=True)

    def mcast(self, handle: int, payload: bytes) -> None:
        conn = self.conn(handle, "mcast")
        if conn.group is None:
            raise CorosyncError("mcast", CS_ERR_NOT_EXIST)
        self.delivered.append((conn.nodeid, payload))
        for other in self._in_group(conn.group):
            self._queue(other, functools.partial(other.deliver, conn.nodeid, conn.pid, payload))

    def dispatch(self, handle: int) -> None:
        conn = self.conn(handle, "dispatch")
        try:
            data = conn.daemon_end.recv(4096)
        except BlockingIOError:
            data = b"?"
        if not data or conn.fake_end is None:
            raise CorosyncError("dispatch", CS_ERR_LIBRARY)
        pending, conn.pending = conn.pending, []
        for event in pending:
            event()

    def finalize(self, handle: int) -> None:
        if handle not in self.conns:
            raise CorosyncError("finalize", CS_ERR_BAD_HANDLE)
        self._remove(handle, CPG_REASON_PROCDOWN, tell_self=False)
        conn = self.conns.pop(handle)
        conn.daemon_end.close()
        if conn.fake_end is not None:
            conn.fake_end.close()

    # internals

    def _in_group(self, group: bytes) -> list[_Conn]:
        return [c for c in self.conns.values() if c.group == group]

    def _remove(self, handle: int, reason: int, *, tell_self: bool) -> None:
        conn = self.conns.get(handle)
        if conn is None or conn.group is None:
            return
        group, conn.group = conn.group, None
        gone = CpgAddress(conn.nodeid, conn.pid, reason)
        if tell_self:
            self._queue(conn, functools.partial(conn.confchg, self._addresses(group), (gone,), ()))
        self._confchg(group, left=(gone,), joined=())

    def _addresses(self, group: bytes) -> tuple[CpgAddress, ...]:
        return tuple(CpgAddress(n, p) for n, p in self.members(group))

    def _confchg(
        self, group: bytes, left: tuple[CpgAddress, ...], joined: tuple[CpgAddress, ...]
    ) -> None:
        members = self._addresses(group)
        for conn in self._in_group(group):
            self._queue(conn, functools.partial(conn.confchg, members, left, joined))

    def _queue(self, conn: _Conn, event: Event) -> None:
        conn.pending.append(event)
        if conn.fake_end is not None:
            conn.fake_end.send(b"!")


class FakeCpg:
    """One node's libcpg (``CpgLibrary``) in a ``FakeCpgCluster``."""

    def __init__(self, cluster: FakeCpgCluster, nodeid: int) -> None:
        self.cluster = cluster
        self.nodeid = nodeid

    def _enter(self, call: str, handle: int | None = None) -> None:
        self.cluster.enter(self.nodeid, call)
        if handle is not None:
            self.cluster.conn(handle, call)

    def initialize(self, deliver: DeliverFn, confchg: ConfchgFn) -> int:
        return self.cluster.initialize(self.nodeid, deliver, confchg)

    def join(self, handle: int, name: bytes) -> None:
        self._enter("join", handle)
        self.cluster.join(handle, name)

    def leave(self, handle: int, name: bytes) -> None:
        self._enter("leave", handle)
        self.cluster.leave(handle)

    def mcast(self, handle: int, payload: bytes) -> None:
        self._enter("mcast", handle)
        self.cluster.mcast(handle, payload)

    def membership(self, handle: int, name: bytes) -> list[tuple[int, int]]:
        self._enter("membership", handle)
        return self.cluster.members(name)

    def local_nodeid(self, handle: int) -> int:
        self._enter("local_nodeid", handle)
        return self.nodeid

    def fd(self, handle: int) -> int:
        self._enter("fd", handle)
        return self.cluster.conn(handle, "fd").daemon_end.fileno()

    def dispatch(self, handle: int) -> None:
        # no "down" check: the closed socket says so, as the real hang-up does
        self.cluster.calls.append((self.nodeid, "dispatch"))
        if "dispatch" in self.cluster.fail:
            raise CorosyncError("dispatch", self.cluster.fail["dispatch"])
        self.cluster.dispatch(handle)

    def finalize(self, handle: int) -> None:
        self.cluster.calls.append((self.nodeid, "finalize"))
        self.cluster.finalize(handle)
