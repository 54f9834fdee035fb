"""An in-memory corosync behind the ``CorosyncLibrary`` seam.

Each quorum connection gets a socketpair: the daemon watches one end (as it would the libqb IPC
socket), the fake writes a byte to the other when a notification is queued, and closes it when
"corosync" crashes, so the event loop sees the same readable-then-CS_ERR_LIBRARY sequence.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass, field

from xvmd.quorum.binding import NotifyFn
from xvmd.quorum.corotypes import (
    CS_ERR_LIBRARY,
    CS_ERR_NOT_EXIST,
    CS_ERR_TRY_AGAIN,
    CS_TRACK_CHANGES,
    CS_TRACK_CURRENT,
    QUORUM_SET,
    CmapValue,
    CorosyncError,
    VoteInfo,
)


@dataclass
class _Conn:
    notify: NotifyFn
    daemon_end: socket.socket
    fake_end: socket.socket | None
    tracking: int = 0
    pending: list[tuple[bool, int, tuple[int, ...]]] = field(default_factory=list)


class FakeCorosync:
    def __init__(self) -> None:
        self.running = True
        self.quorum_type = QUORUM_SET
        self.quorate = True
        self.ring_seq = 8
        self.view: tuple[int, ...] = (1, 2)
        self.votes = {
            0: VoteInfo(node_id=1, expected_votes=3, highest_expected=3, total_votes=2, quorum=2)
        }
        self.cmap: dict[str, CmapValue] = {
            "totem.cluster_name": "fake",
            "nodelist.local_node_pos": 0,
            "nodelist.node.0.name": "node1",
            "nodelist.node.0.nodeid": 1,
            "nodelist.node.0.ring0_addr": "10.0.0.1",
            "nodelist.node.1.name": "node2",
            "nodelist.node.1.nodeid": 2,
            "nodelist.node.1.ring0_addr": "node2.example",
            "nodelist.node.2.name": "node3",
            "nodelist.node.2.nodeid": 3,
            "nodelist.node.2.ring0_addr": "10.0.0.3",
        }
        self.addrs = {1: ("10.0.0.1",), 2: ("10.0.0.2",), 3: ("10.0.0.3",)}
        self.fail: dict[str, int] = {}  # call name -> cs_error to raise (until removed)
        self.fail_once: dict[str, int] = {}  # call name -> cs_error to raise the next time
        self.busy: dict[str, int] = {}  # call name -> how many more times to say TRY_AGAIN
        self.calls: list[str] = []
        self.conns: dict[int, _Conn] = {}
        self.helpers: dict[int, str] = {}  # open helper handles -> service
        self._handles = itertools.count(0x1000)

    # test controls

    def change(self, quorate: bool, view: tuple[int, ...], seq: int | None = None) -> None:
        """A membership/quorum change: notify every tracking connection."""
        self.quorate, self.view = quorate, view
        self.ring_seq = seq if seq is not None else self.ring_seq + 4
        for conn in self.conns.values():
            if conn.tracking & CS_TRACK_CHANGES:
                self._queue(conn)

    def crash(self) -> None:
        self.running = False
        for conn in self.conns.values():
            if conn.fake_end is not None:
                conn.fake_end.close()
                conn.fake_end = None
        self.helpers.clear()

    def restart(self) -> None:
        self.running = True

    def count(self, call: str) -> int:
        return self.calls.count(call)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.daemon_end.close()
            if conn.fake_end is not None:
                conn.fake_end.close()
        self.conns.clear()

    # internals

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        self._injected(call)
        if not self.running:
            raise CorosyncError(call, CS_ERR_LIBRARY)

    def _injected(self, call: str) -> None:
        if call in self.fail_once:
            raise CorosyncError(call, self.fail_once.pop(call))
        if call in self.fail:
            raise CorosyncError(call, self.fail[call])
        if self.busy.get(call, 0) > 0:
            self.busy[call] -= 1
            raise CorosyncError(call, CS_ERR_TRY_AGAIN)

    def _queue(self, conn: _Conn) -> None:
        conn.pending.append((self.quorate, self.ring_seq, self.view))
        if conn.fake_end is not None:
            conn.fake_end.send(b"!")

    def _conn(self, handle: int) -> _Conn:
        return self.conns[handle]

    def _helper(self, service: str) -> int:
        handle = next(self._handles)
        self.helpers[handle] = service
        return handle

    def _check_helper(self, handle: int) -> None:
        if handle not in self.helpers:
            raise CorosyncError("helper", CS_ERR_LIBRARY)

    # CorosyncLibrary

    def quorum_initialize(self, notify: NotifyFn) -> tuple[int, int]:
        self._enter("quorum_initialize")
        daemon_end, fake_end = socket.socketpair()
        daemon_end.setblocking(False)
        handle = next(self._handles)
        self.conns[handle] = _Conn(notify, daemon_end, fake_end)
        return handle, self.quorum_type

    def quorum_fd_get(self, handle: int) -> int:
        self._enter("quorum_fd_get")
        return self._conn(handle).daemon_end.fileno()

    def quorum_getquorate(self, handle: int) -> bool:
        self._enter("quorum_getquorate")
        return self.quorate

    def quorum_trackstart(self, handle: int, flags: int) -> None:
        self._enter("quorum_trackstart")
        conn = self._conn(handle)
        conn.tracking = flags
        if flags & CS_TRACK_CURRENT:
            self._queue(conn)

    def quorum_dispatch(self, handle: int, flags: int) -> None:
        self.calls.append("quorum_dispatch")
        self._injected("quorum_dispatch")
        conn = self._conn(handle)
        try:
            data = conn.daemon_end.recv(4096)
        except BlockingIOError:
            data = b"?"
        if not data or conn.fake_end is None:
            raise CorosyncError("quorum_dispatch", CS_ERR_LIBRARY)
        pending, conn.pending = conn.pending, []
        for quorate, seq, view in pending:
            conn.notify(quorate, seq, view)

    def quorum_finalize(self, handle: int) -> None:
        self.calls.append("quorum_finalize")
        conn = self.conns.pop(handle)
        conn.daemon_end.close()
        if conn.fake_end is not None:
            conn.fake_end.close()

    def votequorum_initialize(self) -> int:
        self._enter("votequorum_initialize")
        return self._helper("votequorum")

    def votequorum_getinfo(self, handle: int, nodeid: int) -> VoteInfo:
        self._enter("votequorum_getinfo")
        self._check_helper(handle)
        if nodeid not in self.votes:
            raise CorosyncError("votequorum_getinfo", CS_ERR_NOT_EXIST)
        return self.votes[nodeid]

    def votequorum_finalize(self, handle: int) -> None:
        self.calls.append("votequorum_finalize")
        self.helpers.pop(handle, None)

    def cmap_initialize(self) -> int:
        self._enter("cmap_initialize")
        return self._helper("cmap")

    def cmap_get(self, handle: int, key: str) -> CmapValue:
        self._enter("cmap_get")
        self._check_helper(handle)
        if key not in self.cmap:
            raise CorosyncError("cmap_get", CS_ERR_NOT_EXIST)
        return self.cmap[key]

    def cmap_get_prefix(self, handle: int, prefix: str) -> dict[str, CmapValue]:
        self._enter("cmap_get_prefix")
        self._check_helper(handle)
        return {k: v for k, v in self.cmap.items() if k.startswith(prefix)}

    def cmap_finalize(self, handle: int) -> None:
        self.calls.append("cmap_finalize")
        self.helpers.pop(handle, None)

    def cfg_initialize(self) -> int:
        self._enter("cfg_initialize")
        return self._helper("cfg")

    def cfg_get_node_addrs(self, handle: int, nodeid: int) -> tuple[str, ...]:
        self._enter("cfg_get_node_addrs")
        self._check_helper(handle)
        return self.addrs.get(nodeid, ())

    def cfg_local_get(self, handle: int) -> int:
        self._enter("cfg_local_get")
        self._check_helper(handle)
        return 1

    def cfg_finalize(self, handle: int) -> None:
        self.calls.append("cfg_finalize")
        self.helpers.pop(handle, None)
