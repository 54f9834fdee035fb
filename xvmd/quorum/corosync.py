"""corosync 3 quorum and membership, event driven, through the corosync C libraries (ctypes).

Theory of operation:

- ``CorosyncQuorum.start()`` loads the libraries (by soname, once) and connects:
  ``quorum_initialize`` with a v0 notify callback, then it insists on ``QUORUM_SET`` (with
  ``QUORUM_FREE`` corosync calls every partition quorate, so fencing is refused instead),
  ``quorum_fd_get``, ``quorum_getquorate``, ``quorum_trackstart(CHANGES|CURRENT)`` and
  ``loop.add_reader(fd)``. A readable fd means ``quorum_dispatch(CS_DISPATCH_ALL)``, which runs
  the notify callback on the loop thread.
- Each notification (and the connect itself) re-reads the cheap local details: votequorum for
  the local node's votes, cmap for the cluster name and the nodelist, libcfg for each member's
  link addresses. A failure there only leaves those fields empty; quorum tracking goes on.
- When corosync goes away the fd reports POLLHUP and dispatch returns CS_ERR_LIBRARY: the
  session is finalized, the status becomes "not connected, not quorate", and a task reconnects
  with a doubling backoff until it succeeds. Nothing here raises out of the event loop.
- Every C call goes through the small ``CorosyncLibrary`` seam; ``CtypesCorosync`` is the real
  one and the unit tests pass a fake. The pure helpers below (``build_status``,
  ``parse_nodelist``, ``sockaddr_address``, ...) need no corosync at all.

Only this module loads the corosync libraries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from xvmd.quorum import NOT_CONNECTED, Listener, Member, QuorumStatus

log = logging.getLogger("xvmd.quorum")

# --- corotypes.h / quorum.h constants -------------------------------------------------------

CS_OK = 1
CS_ERR_LIBRARY = 2
CS_ERR_TRY_AGAIN = 6
CS_ERR_INVALID_PARAM = 7
CS_ERR_BAD_HANDLE = 9
CS_ERR_ACCESS = 11
CS_ERR_NOT_EXIST = 12
CS_ERR_QUEUE_FULL = 23
CS_ERR_NO_SECTIONS = 27
CS_ERR_SECURITY = 100

_CS_ERRORS = {
    1: "CS_OK",
    2: "CS_ERR_LIBRARY",
    3: "CS_ERR_VERSION",
    4: "CS_ERR_INIT",
    5: "CS_ERR_TIMEOUT",
    6: "CS_ERR_TRY_AGAIN",
    7: "CS_ERR_INVALID_PARAM",
    8: "CS_ERR_NO_MEMORY",
    9: "CS_ERR_BAD_HANDLE",
    10: "CS_ERR_BUSY",
    11: "CS_ERR_ACCESS",
    12: "CS_ERR_NOT_EXIST",
    13: "CS_ERR_NAME_TOO_LONG",
    14: "CS_ERR_EXIST",
    15: "CS_ERR_NO_SPACE",
    16: "CS_ERR_INTERRUPT",
    17: "CS_ERR_NAME_NOT_FOUND",
    18: "CS_ERR_NO_RESOURCES",
    19: "CS_ERR_NOT_SUPPORTED",
    20: "CS_ERR_BAD_OPERATION",
    21: "CS_ERR_FAILED_OPERATION",
    22: "CS_ERR_MESSAGE_ERROR",
    23: "CS_ERR_QUEUE_FULL",
    24: "CS_ERR_QUEUE_NOT_AVAILABLE",
    25: "CS_ERR_BAD_FLAGS",
    26: "CS_ERR_TOO_BIG",
    27: "CS_ERR_NO_SECTIONS",
    28: "CS_ERR_CONTEXT_NOT_FOUND",
    30: "CS_ERR_TOO_MANY_GROUPS",
    100: "CS_ERR_SECURITY",
}

QUORUM_FREE = 0
QUORUM_SET = 1
CS_TRACK_CURRENT = 1
CS_TRACK_CHANGES = 2
CS_DISPATCH_ALL = 2

# cmap value types
CMAP_INT8, CMAP_UINT8, CMAP_INT16, CMAP_UINT16 = 1, 2, 3, 4
CMAP_INT32, CMAP_UINT32, CMAP_INT64, CMAP_UINT64 = 5, 6, 7, 8
CMAP_FLOAT, CMAP_DOUBLE, CMAP_STRING, CMAP_BINARY = 9, 10, 11, 12
CMAP_KEYNAME_MAXLEN = 255

_CMAP_NUMBERS = {
    CMAP_INT8: "b",
    CMAP_UINT8: "B",
    CMAP_INT16: "h",
    CMAP_UINT16: "H",
    CMAP_INT32: "i",
    CMAP_UINT32: "I",
    CMAP_INT64: "q",
    CMAP_UINT64: "Q",
    CMAP_FLOAT: "f",
    CMAP_DOUBLE: "d",
}

# votequorum_info.flags
_VOTEQUORUM_FLAGS = (
    (1, "2Node"),
    (2, "Quorate"),
    (4, "WaitForAll"),
    (8, "LastManStanding"),
    (16, "AutoTieBreaker"),
    (32, "AllowDownscale"),
    (64, "QdeviceRegistered"),
    (128, "QdeviceAlive"),
    (256, "QdeviceCastVote"),
    (512, "QdeviceMasterWins"),
)

SONAMES = {
    "quorum": "libquorum.so.5",
    "votequorum": "libvotequorum.so.8",
    "cmap": "libcmap.so.4",
    "cfg": "libcfg.so.7",
}

# --- reasons (operator language; tests match on them) ----------------------------------------

REASON_QUORATE = "quorate"
REASON_NO_LIBRARIES = "corosync libraries not found (install corosync)"
REASON_QUORUM_FREE = "corosync has no quorum provider (QUORUM_FREE): fencing refused"
REASON_LOST = "corosync is not running (lost connection); reconnecting"
REASON_STOPPED = "not following corosync (quorum tracking stopped)"


def cs_error_name(code: int) -> str:
    return _CS_ERRORS.get(code, f"CS_ERR_{code}")


class CorosyncError(Exception):
    """A corosync library call returned something other than CS_OK."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call}: {cs_error_name(code)}")
        self.call = call
        self.code = code


def connect_failure_reason(code: int, was_connected: bool) -> str:
    """Why we are not connected, after ``quorum_initialize`` (or a later step) failed."""
    if code == CS_ERR_LIBRARY:
        if was_connected:
            return REASON_LOST
        return "corosync is not running (cannot connect: CS_ERR_LIBRARY); retrying"
    if code in (CS_ERR_ACCESS, CS_ERR_SECURITY):
        return (
            f"corosync refused the connection ({cs_error_name(code)}): run xvmd as root or "
            "allow its user in a corosync uidgid entry; retrying"
        )
    return f"cannot connect to corosync ({cs_error_name(code)}); retrying"


# --- plain data the library seam returns --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteInfo:
    """``struct votequorum_info`` for one node (nodeid 0 asks for the local node)."""

    node_id: int
    node_state: int = 1
    node_votes: int = 1
    expected_votes: int = 0
    highest_expected: int = 0
    total_votes: int = 0
    quorum: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One ``nodelist.node.N`` entry of corosync.conf as cmap reports it."""

    pos: int
    nodeid: int | None
    name: str | None = None
    ring_addrs: tuple[str, ...] = ()  # ring0_addr, ring1_addr, ... in link order


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str | None = None
    nodes: tuple[NodeConfig, ...] = ()
    local_nodeid: int | None = None  # from nodelist.local_node_pos


CmapValue = int | float | str | bytes
NotifyFn = Callable[[bool, int, tuple[int, ...]], None]
"""Python side of the quorum v0 notify callback: (quorate, ring_seq, view node ids)."""


class CorosyncLibrary(Protocol):
    """The few corosync calls this module uses, with C errors turned into ``CorosyncError``."""

    def quorum_initialize(self, notify: NotifyFn) -> tuple[int, int]:
        """Returns (handle, quorum_type)."""
        ...

    def quorum_fd_get(self, handle: int) -> int: ...

    def quorum_getquorate(self, handle: int) -> bool: ...

    def quorum_trackstart(self, handle: int, flags: int) -> None: ...

    def quorum_dispatch(self, handle: int, flags: int) -> None: ...

    def quorum_finalize(self, handle: int) -> None: ...

    def votequorum_initialize(self) -> int: ...

    def votequorum_getinfo(self, handle: int, nodeid: int) -> VoteInfo: ...

    def votequorum_finalize(self, handle: int) -> None: ...

    def cmap_initialize(self) -> int: ...

    def cmap_get(self, handle: int, key: str) -> CmapValue: ...

    def cmap_get_prefix(self, handle: int, prefix: str) -> dict[str, CmapValue]: ...

    def cmap_finalize(self, handle: int) -> None: ...

    def cfg_initialize(self) -> int: ...

    def cfg_get_node_addrs(self, handle: int, nodeid: int) -> tuple[str, ...]: ...

    def cfg_local_get(self, handle: int) -> int: ...

    def cfg_finalize(self, handle: int) -> None: ...


# --- pure helpers ----------------------------------------------------------------------------


def decode_cmap_value(value_type: int, raw: bytes) -> CmapValue:
    """A cmap value as Python: numbers by type, strings without their NUL, else bytes."""
    fmt = _CMAP_NUMBERS.get(value_type)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if len(raw) < size:
            raise ValueError(f"cmap value of type {value_type} needs {size} bytes, got {len(raw)}")
        number: int | float = struct.unpack("=" + fmt, raw[:size])[0]
        return number
    if value_type == CMAP_STRING:
        return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return bytes(raw)


def parse_nodelist(values: Mapping[str, CmapValue]) -> ClusterConfig:
    """``nodelist.*`` cmap keys -> the configured nodes (ordered by position in the file).

    Ring addresses come from ``ringX_addr`` keys in link order; missing or malformed keys are
    skipped rather than trusted.
    """
    nodes: dict[int, dict[str, CmapValue]] = {}
    for key, value in values.items():
        parts = key.split(".")
        if len(parts) != 4 or parts[:2] != ["nodelist", "node"] or not parts[2].isdigit():
            continue
        nodes.setdefault(int(parts[2]), {})[parts[3]] = value
    out = []
    for pos in sorted(nodes):
        entry = nodes[pos]
        nodeid = entry.get("nodeid")
        name = entry.get("name")
        rings: list[tuple[int, str]] = []
        for attr, value in entry.items():
            if attr.startswith("ring") and attr.endswith("_addr") and isinstance(value, str):
                index = attr[4:-5]
                if index.isdigit() and value:
                    rings.append((int(index), value))
        out.append(
            NodeConfig(
                pos=pos,
                nodeid=nodeid if isinstance(nodeid, int) and nodeid > 0 else None,
                name=name if isinstance(name, str) and name else None,
                ring_addrs=tuple(addr for _, addr in sorted(rings)),
            )
        )
    local_pos = values.get("nodelist.local_node_pos")
    local = None
    for node in out:
        if node.pos == local_pos:
            local = node.nodeid
    return ClusterConfig(nodes=tuple(out), local_nodeid=local)


def sockaddr_address(raw: bytes) -> str | None:
    """The IP of a ``sockaddr_in``/``sockaddr_in6`` (as in ``corosync_cfg_node_address_t``)."""
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], sys.byteorder)  # sa_family_t is in host order
    if family == socket.AF_INET and len(raw) >= 8:
        return str(ipaddress.IPv4Address(raw[4:8]))
    if family == socket.AF_INET6 and len(raw) >= 24:
        addr = ipaddress.IPv6Address(raw[8:24])
        return str(addr.ipv4_mapped or addr)
    return None


def vote_flag_words(flags: int) -> str:
    """votequorum flags as ``corosync-quorumtool`` words, e.g. ``"Quorate WaitForAll"``."""
    return " ".join(word for bit, word in _VOTEQUORUM_FLAGS if flags & bit)


def not_quorate_reason(vote: VoteInfo | None) -> str:
    if vote is None or not vote.quorum:
        return "this partition is not quorate: fencing refused"
    return (
        f"this partition is not quorate ({vote.total_votes} of {vote.expected_votes} expected "
        f"votes, {vote.quorum} needed): fencing refused"
    )


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything one refresh learnt, raw; ``build_status`` turns it into a ``QuorumStatus``."""

    quorum_type: int
    quorate: bool
    ring_seq: int | None = None
    view: tuple[int, ...] | None = None  # None: no notification yet
    vote: VoteInfo | None = None
    cluster: ClusterConfig | None = None
    addresses: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    local_nodeid: int | None = None


def build_status(obs: Observation, now: float) -> QuorumStatus:
    """A connected session's raw values -> the published status (connected is True here).

    Quorate needs all three: QUORUM_SET, the quorum service saying quorate, and a
    non-empty view (an empty view is corosync starting up, as pacemaker also treats it).
    ``ring_id`` is (lowest member id, ring seq): the v0 callback carries only the seq, and totem
    makes the lowest node id of the new membership its representative.
    """
    quorum_set = obs.quorum_type == QUORUM_SET
    view = tuple(sorted(set(obs.view or ())))
    nodes = {n.nodeid: n for n in obs.cluster.nodes if n.nodeid} if obs.cluster else {}
    members = []
    for nodeid in view:
        conf = nodes.get(nodeid)
        addrs = obs.addresses.get(nodeid) or (conf.ring_addrs if conf else ())
        members.append(Member(nodeid, conf.name if conf else None, tuple(addrs)))
    if not quorum_set:
        quorate, reason = False, REASON_QUORUM_FREE
    elif not obs.quorate:
        quorate, reason = False, not_quorate_reason(obs.vote)
    elif not view:
        quorate = False
        reason = "corosync reports quorum but no membership yet: fencing refused until it does"
    else:
        quorate, reason = True, REASON_QUORATE
    vote = obs.vote
    local = obs.local_nodeid
    if local is None and vote is not None and vote.node_id:
        local = vote.node_id
    if local is None and obs.cluster is not None:
        local = obs.cluster.local_nodeid
    extra: dict[str, str] = {}
    if vote is not None:
        extra["votequorum_flags"] = vote_flag_words(vote.flags)
        extra["highest_expected"] = str(vote.highest_expected)
    return QuorumStatus(
        connected=True,
        quorate=quorate,
        reason=reason,
        quorum_set=quorum_set,
        ring_id=(view[0], obs.ring_seq) if view and obs.ring_seq is not None else None,
        local_nodeid=local,
        members=tuple(members),
        expected_votes=vote.expected_votes if vote else None,
        total_votes=vote.total_votes if vote else None,
        quorum=vote.quorum if vote else None,
        changed_at=now,
        cluster_name=obs.cluster.name if obs.cluster else None,
        extra=extra,
    )


def disconnected_status(
    reason: str, now: float, previous: QuorumStatus | None = None
) -> QuorumStatus:
    """Not connected, not quorate; keeps the cluster name and local id for the operator."""
    return QuorumStatus(
        connected=False,
        quorate=False,
        reason=reason,
        local_nodeid=previous.local_nodeid if previous else None,
        cluster_name=previous.cluster_name if previous else None,
        changed_at=now,
    )


def same_status(a: QuorumStatus, b: QuorumStatus) -> bool:
    """Equal apart from ``changed_at``."""
    return replace(a, changed_at=0.0) == replace(b, changed_at=0.0)


def describe_members(status: QuorumStatus) -> str:
    if not status.members:
        return "no members"
    names = ", ".join(f"{m.nodeid} ({m.name})" if m.name else str(m.nodeid) for m in status.members)
    count = len(status.members)
    return f"{count} member{'s' if count != 1 else ''}: {names}"


def _state_key(status: QuorumStatus) -> tuple[bool, bool, bool, str]:
    # While connected, the reason only details the state (vote counts); while not connected it
    # is the state (not running, access denied, no libraries, stopped).
    detail = "" if status.connected else status.reason
    return status.connected, status.quorate, status.quorum_set, detail


def transition_message(old: QuorumStatus, new: QuorumStatus) -> tuple[int, str] | None:
    """The log line (level, text) for a status change, or None when nothing worth saying changed.

    Each change of connected/quorate is logged once (never per retry: the reason stays the
    same while a reconnect keeps failing); membership changes at INFO.
    """
    name = f"corosync cluster {new.cluster_name}" if new.cluster_name else "the corosync cluster"
    members = describe_members(new)
    if _state_key(old) != _state_key(new):
        if new.quorate:
            votes = ""
            if new.total_votes is not None:
                votes = f", {new.total_votes}/{new.expected_votes} votes, quorum {new.quorum}"
            return logging.INFO, f"{name} is quorate ({members}{votes})"
        if not new.connected:
            if new.reason == REASON_STOPPED:
                return logging.INFO, new.reason
            if new.reason == REASON_NO_LIBRARIES:
                return logging.ERROR, f"{new.reason}: fencing refused"
            return logging.WARNING, f"{new.reason} (fencing refused meanwhile)"
        if not new.quorum_set:
            return logging.ERROR, new.reason
        return logging.WARNING, f"{name}: {new.reason} ({members})"
    if old.member_ids != new.member_ids:
        state = "quorate" if new.quorate else "not quorate"
        return logging.INFO, f"{name} membership changed, {state} ({members})"
    return None


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset`` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial


# --- the real library layer (ctypes) -----------------------------------------------------------

_QUORUM_NOTIFY = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.c_uint32,
    ctypes.c_uint64,
    ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_uint32),
)


class _QuorumCallbacks(ctypes.Structure):
    _fields_ = [("quorum_notify_fn", _QUORUM_NOTIFY)]


class _VotequorumCallbacks(ctypes.Structure):
    _fields_ = [
        ("quorum_notify_fn", ctypes.c_void_p),
        ("expectedvotes_notify_fn", ctypes.c_void_p),
        ("nodelist_notify_fn", ctypes.c_void_p),
    ]


class _VotequorumInfo(ctypes.Structure):
    _fields_ = [
        ("node_id", ctypes.c_uint),
        ("node_state", ctypes.c_uint),
        ("node_votes", ctypes.c_uint),
        ("node_expected_votes", ctypes.c_uint),
        ("highest_expected", ctypes.c_uint),
        ("total_votes", ctypes.c_uint),
        ("quorum", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("qdevice_votes", ctypes.c_uint),
        ("qdevice_name", ctypes.c_char * 255),
    ]


class _CfgNodeAddress(ctypes.Structure):
    _fields_ = [("address_length", ctypes.c_int), ("address", ctypes.c_ubyte * 28)]


_H = ctypes.c_uint64
_P = ctypes.c_void_p  # pointers are passed with byref()/arrays; declared as opaque
_MAX_ADDRS = 8  # knet links
_RETRIES = 5  # CS_ERR_TRY_AGAIN / QUEUE_FULL, 20 ms .. 100 ms apart (at most 0.3 s)


def _declare(lib: ctypes.CDLL, name: str, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int
    fn.argtypes = list(argtypes)
    return fn


class CtypesCorosync:
    """``CorosyncLibrary`` over the real libraries, loaded by soname."""

    def __init__(self, sonames: Mapping[str, str] = SONAMES) -> None:
        quorum = ctypes.CDLL(sonames["quorum"])
        votequorum = ctypes.CDLL(sonames["votequorum"])
        cmap = ctypes.CDLL(sonames["cmap"])
        cfg = ctypes.CDLL(sonames["cfg"])
        self._q_init = _declare(quorum, "quorum_initialize", _P, _P, _P)
        self._q_fd = _declare(quorum, "quorum_fd_get", _H, _P)
        self._q_getquorate = _declare(quorum, "quorum_getquorate", _H, _P)
        self._q_trackstart = _declare(quorum, "quorum_trackstart", _H, ctypes.c_uint)
        self._q_dispatch = _declare(quorum, "quorum_dispatch", _H, ctypes.c_int)
        self._q_finalize = _declare(quorum, "quorum_finalize", _H)
        self._vq_init = _declare(votequorum, "votequorum_initialize", _P, _P)
        self._vq_getinfo = _declare(votequorum, "votequorum_getinfo", _H, ctypes.c_uint, _P)
        self._vq_finalize = _declare(votequorum, "votequorum_finalize", _H)
        self._cmap_init = _declare(cmap, "cmap_initialize", _P)
        self._cmap_get = _declare(cmap, "cmap_get", _H, ctypes.c_char_p, _P, _P, _P)
        self._cmap_iter_init = _declare(cmap, "cmap_iter_init", _H, ctypes.c_char_p, _P)
        self._cmap_iter_next = _declare(cmap, "cmap_iter_next", _H, _H, _P, _P, _P)
        self._cmap_iter_finalize = _declare(cmap, "cmap_iter_finalize", _H, _H)
        self._cmap_finalize = _declare(cmap, "cmap_finalize", _H)
        self._cfg_init = _declare(cfg, "corosync_cfg_initialize", _P, _P)
        self._cfg_addrs = _declare(
            cfg, "corosync_cfg_get_node_addrs", _H, ctypes.c_uint, ctypes.c_size_t, _P, _P
        )
        self._cfg_local = _declare(cfg, "corosync_cfg_local_get", _H, _P)
        self._cfg_finalize = _declare(cfg, "corosync_cfg_finalize", _H)
        # handle -> (CFUNCTYPE object, callbacks struct): C keeps the function pointer.
        self._callbacks: dict[int, tuple[Any, _QuorumCallbacks]] = {}

    @staticmethod
    def _call(name: str, fn: Any, *args: Any, retry: bool = True) -> None:
        for attempt in range(1, _RETRIES + 1):
            rc = int(fn(*args))
            if rc == CS_OK:
                return
            if not retry or rc not in (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL) or attempt == _RETRIES:
                raise CorosyncError(name, rc)
            time.sleep(0.02 * attempt)

    # quorum

    def quorum_initialize(self, notify: NotifyFn) -> tuple[int, int]:
        def trampoline(_h: int, quorate: int, ring_seq: int, n: int, view: Any) -> None:
            try:
                ids = tuple(int(view[i]) for i in range(n)) if n and view else ()
                notify(bool(quorate), int(ring_seq), ids)
            except Exception:  # never let an exception unwind into C
                log.exception("error in the corosync quorum notification handler")

        cfunc = _QUORUM_NOTIFY(trampoline)
        callbacks = _QuorumCallbacks(cfunc)
        handle = ctypes.c_uint64()
        quorum_type = ctypes.c_uint32()
        self._call(
            "quorum_initialize",
            self._q_init,
            ctypes.byref(handle),
            ctypes.byref(callbacks),
            ctypes.byref(quorum_type),
        )
        self._callbacks[handle.value] = (cfunc, callbacks)
        return handle.value, quorum_type.value

    def quorum_fd_get(self, handle: int) -> int:
        fd = ctypes.c_int()
        self._call("quorum_fd_get", self._q_fd, handle, ctypes.byref(fd))
        return fd.value

    def quorum_getquorate(self, handle: int) -> bool:
        quorate = ctypes.c_int()
        self._call("quorum_getquorate", self._q_getquorate, handle, ctypes.byref(quorate))
        return bool(quorate.value)

    def quorum_trackstart(self, handle: int, flags: int) -> None:
        self._call("quorum_trackstart", self._q_trackstart, handle, flags)

    def quorum_dispatch(self, handle: int, flags: int) -> None:
        self._call("quorum_dispatch", self._q_dispatch, handle, flags, retry=False)

    def quorum_finalize(self, handle: int) -> None:
        try:
            self._call("quorum_finalize", self._q_finalize, handle, retry=False)
        finally:
            self._callbacks.pop(handle, None)

    # votequorum

    def votequorum_initialize(self) -> int:
        handle = ctypes.c_uint64()
        callbacks = _VotequorumCallbacks()  # no callbacks: getinfo only
        self._call(
            "votequorum_initialize", self._vq_init, ctypes.byref(handle), ctypes.byref(callbacks)
        )
        return handle.value

    def votequorum_getinfo(self, handle: int, nodeid: int) -> VoteInfo:
        info = _VotequorumInfo()
        self._call("votequorum_getinfo", self._vq_getinfo, handle, nodeid, ctypes.byref(info))
        return VoteInfo(
            node_id=int(info.node_id),
            node_state=int(info.node_state),
            node_votes=int(info.node_votes),
            expected_votes=int(info.node_expected_votes),
            highest_expected=int(info.highest_expected),
            total_votes=int(info.total_votes),
            quorum=int(info.quorum),
            flags=int(info.flags),
        )

    def votequorum_finalize(self, handle: int) -> None:
        self._call("votequorum_finalize", self._vq_finalize, handle, retry=False)

    # cmap

    def cmap_initialize(self) -> int:
        handle = ctypes.c_uint64()
        self._call("cmap_initialize", self._cmap_init, ctypes.byref(handle))
        return handle.value

    def cmap_get(self, handle: int, key: str) -> CmapValue:
        name = key.encode()
        length = ctypes.c_size_t()
        value_type = ctypes.c_int()
        self._call("cmap_get", self._cmap_get, handle, name, None, ctypes.byref(length), None)
        buf = ctypes.create_string_buffer(max(1, length.value))
        length = ctypes.c_size_t(len(buf))
        self._call(
            "cmap_get",
            self._cmap_get,
            handle,
            name,
            buf,
            ctypes.byref(length),
            ctypes.byref(value_type),
        )
        return decode_cmap_value(value_type.value, buf.raw[: length.value])

    def cmap_get_prefix(self, handle: int, prefix: str) -> dict[str, CmapValue]:
        it = ctypes.c_uint64()
        raw_prefix = prefix.encode()
        self._call("cmap_iter_init", self._cmap_iter_init, handle, raw_prefix, ctypes.byref(it))
        keys = []
        try:
            name = ctypes.create_string_buffer(CMAP_KEYNAME_MAXLEN + 1)
            while True:
                rc = int(self._cmap_iter_next(handle, it.value, name, None, None))
                if rc == CS_ERR_NO_SECTIONS:
                    break
                if rc != CS_OK:
                    raise CorosyncError("cmap_iter_next", rc)
                keys.append(name.value.decode("utf-8", errors="replace"))
        finally:
            self._cmap_iter_finalize(handle, it.value)
        out: dict[str, CmapValue] = {}
        for key in keys:
            try:
                out[key] = self.cmap_get(handle, key)
            except CorosyncError as e:
                if e.code != CS_ERR_NOT_EXIST:  # deleted meanwhile: skip it
                    raise
        return out

    def cmap_finalize(self, handle: int) -> None:
        self._call("cmap_finalize", self._cmap_finalize, handle, retry=False)

    # cfg

    def cfg_initialize(self) -> int:
        handle = ctypes.c_uint64()
        self._call("corosync_cfg_initialize", self._cfg_init, ctypes.byref(handle), None)
        return handle.value

    def cfg_get_node_addrs(self, handle: int, nodeid: int) -> tuple[str, ...]:
        addrs = (_CfgNodeAddress * _MAX_ADDRS)()
        count = ctypes.c_int()
        self._call(
            "corosync_cfg_get_node_addrs",
            self._cfg_addrs,
            handle,
            nodeid,
            _MAX_ADDRS,
            ctypes.byref(count),
            addrs,
        )
        out = []
        for entry in addrs[: max(0, min(count.value, _MAX_ADDRS))]:
            ip = sockaddr_address(bytes(entry.address))
            if ip is not None:
                out.append(ip)
        return tuple(out)

    def cfg_local_get(self, handle: int) -> int:
        nodeid = ctypes.c_uint()
        self._call("corosync_cfg_local_get", self._cfg_local, handle, ctypes.byref(nodeid))
        return nodeid.value

    def cfg_finalize(self, handle: int) -> None:
        self._call("corosync_cfg_finalize", self._cfg_finalize, handle, retry=False)


def load_library() -> CorosyncLibrary:
    """The real libraries; raises ``OSError`` when they are not installed."""
    return CtypesCorosync()


# --- the quorum source -----------------------------------------------------------------------


@dataclass
class _Session:
    """One connection to corosync: the quorum handle plus the optional helper handles."""

    quorum: int
    quorum_type: int
    fd: int
    quorate: bool
    votequorum: int | None = None
    cmap: int | None = None
    cfg: int | None = None
    ring_seq: int | None = None
    view: tuple[int, ...] | None = None
    notified: bool = False  # a notification arrived since connect
    pending: bool = False  # a notification arrived during the current dispatch


class CorosyncQuorum:
    """``QuorumSource`` following corosync 3 through its libraries.

    ``library`` returns the C layer (default: the real one, loaded in ``start()``);
    ``retry_initial``/``retry_max`` bound the reconnect backoff; ``clock`` stamps ``changed_at``;
    ``sleep`` waits between reconnect attempts (tests pass one that records the delays).
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
        self._listeners: list[Listener] = []
        self._session: _Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._was_connected = False
        self._stopped = False
        self.connects = 0  # successful connections so far (for tests and diagnostics)

    # QuorumSource

    def current(self) -> QuorumStatus:
        return self._status

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

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
        if not self._connect():
            self._schedule_reconnect()

    async def stop(self) -> None:
        self._stopped = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_session()
        self._publish(disconnected_status(REASON_STOPPED, self._clock(), self._status))

    # connection

    def _connect(self) -> bool:
        """One connection attempt; publishes the outcome; True when connected."""
        lib = self._lib
        assert lib is not None and self._loop is not None
        handle: int | None = None
        try:
            handle, quorum_type = lib.quorum_initialize(self._on_notify)
            fd = lib.quorum_fd_get(handle)
            quorate = lib.quorum_getquorate(handle)
            lib.quorum_trackstart(handle, CS_TRACK_CHANGES | CS_TRACK_CURRENT)
            session = _Session(handle, quorum_type, fd, quorate)
            self._loop.add_reader(fd, self._on_readable)
        except Exception as e:
            if handle is not None:
                with contextlib.suppress(Exception):
                    lib.quorum_finalize(handle)
            if not isinstance(e, CorosyncError):  # a bug, not corosync: say so, keep trying
                log.exception("unexpected error while connecting to corosync")
                reason = f"cannot connect to corosync (unexpected error: {e}); retrying"
            elif e.code in (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL) and self._failed_before():
                log.debug("connecting to corosync: %s", e)
                return False  # corosync is starting: keep the status we have
            else:
                log.debug("connecting to corosync failed: %s", e)
                reason = connect_failure_reason(e.code, self._was_connected)
            self._publish(disconnected_status(reason, self._clock(), self._status))
            return False
        self._session = session
        self._was_connected = True
        self.connects += 1
        self._backoff.reset()
        self._open_helpers(session)
        # CS_TRACK_CURRENT queues the first notification before trackstart returns: take it now
        # so the first published status already has the membership.
        if not self._dispatch(session):
            return False  # lost again at once
        if not session.notified:
            self._refresh(session)
        return True

    def _failed_before(self) -> bool:
        """Not connected, for a reason we already published (not just "not connected yet")."""
        return not self._status.connected and self._status.reason != NOT_CONNECTED.reason

    def _open_helpers(self, session: _Session) -> None:
        lib = self._lib
        assert lib is not None
        for attr, opener in (
            ("votequorum", lib.votequorum_initialize),
            ("cmap", lib.cmap_initialize),
            ("cfg", lib.cfg_initialize),
        ):
            if getattr(session, attr) is not None:
                continue
            try:
                setattr(session, attr, opener())
            except CorosyncError as e:
                log.debug("corosync helper service: %s", e)

    def _close_session(self) -> None:
        session, self._session = self._session, None
        lib = self._lib
        if session is None or lib is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(session.fd)
        closers: Sequence[tuple[int | None, Callable[[int], None]]] = (
            (session.quorum, lib.quorum_finalize),
            (session.votequorum, lib.votequorum_finalize),
            (session.cmap, lib.cmap_finalize),
            (session.cfg, lib.cfg_finalize),
        )
        for handle, closer in closers:
            if handle is not None:
                try:
                    closer(handle)
                except Exception as e:  # finalize after a lost connection may complain
                    log.debug("corosync finalize: %s", e)

    def _lost(self, why: str) -> None:
        log.debug("corosync connection lost (%s)", why)
        self._close_session()
        self._publish(disconnected_status(REASON_LOST, self._clock(), self._status))
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._stopped or self._reconnect_task is not None:
            return
        assert self._loop is not None
        self._reconnect_task = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            while not self._stopped:
                await self._sleep(self._backoff.next())
                if self._stopped:
                    return
                if self._connect():
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
        """Dispatch pending callbacks; False when the connection is gone."""
        lib = self._lib
        assert lib is not None
        session.pending = False
        try:
            lib.quorum_dispatch(session.quorum, CS_DISPATCH_ALL)
        except CorosyncError as e:
            if e.code not in (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL):
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

    def _refresh(self, session: _Session) -> None:
        obs = self._observe(session)
        self._publish(build_status(obs, self._clock()))

    def _observe(self, session: _Session) -> Observation:
        """The session's quorum values plus what the helper services say (best effort)."""
        lib = self._lib
        assert lib is not None
        self._open_helpers(session)
        vote: VoteInfo | None = None
        cluster: ClusterConfig | None = None
        local: int | None = None
        addresses: dict[int, tuple[str, ...]] = {}

        def read_votequorum(handle: int) -> None:
            nonlocal vote
            vote = lib.votequorum_getinfo(handle, 0)

        def read_cmap(handle: int) -> None:
            nonlocal cluster
            cluster = parse_nodelist(lib.cmap_get_prefix(handle, "nodelist."))
            with contextlib.suppress(CorosyncError):
                name = lib.cmap_get(handle, "totem.cluster_name")
                cluster = replace(cluster, name=name if isinstance(name, str) else None)

        def read_cfg(handle: int) -> None:
            nonlocal local
            local = lib.cfg_local_get(handle) or None
            for nodeid in session.view or ():
                addresses[nodeid] = lib.cfg_get_node_addrs(handle, nodeid)

        session.votequorum = self._ask(session.votequorum, read_votequorum, lib.votequorum_finalize)
        session.cmap = self._ask(session.cmap, read_cmap, lib.cmap_finalize)
        session.cfg = self._ask(session.cfg, read_cfg, lib.cfg_finalize)
        return Observation(
            quorum_type=session.quorum_type,
            quorate=session.quorate,
            ring_seq=session.ring_seq,
            view=session.view,
            vote=vote,
            cluster=cluster,
            addresses=addresses,
            local_nodeid=local,
        )

    @staticmethod
    def _ask(
        handle: int | None, read: Callable[[int], None], finalize: Callable[[int], None]
    ) -> int | None:
        """Run one helper read; returns the handle to keep (None: closed, reopened next time).

        Failures only leave the helper's fields empty: quorum tracking never depends on them.
        """
        if handle is None:
            return None
        try:
            read(handle)
        except CorosyncError as e:
            log.debug("corosync helper service: %s", e)
            if e.code not in (CS_ERR_LIBRARY, CS_ERR_BAD_HANDLE):
                return handle
        except Exception:
            log.exception("unexpected error reading corosync details (ignored)")
            return handle
        else:
            return handle
        with contextlib.suppress(Exception):
            finalize(handle)
        return None

    # publishing

    def _publish(self, status: QuorumStatus) -> None:
        old = self._status
        if same_status(old, status):
            return
        self._status = status
        message = transition_message(old, status)
        if message is not None:
            log.log(message[0], "%s", message[1])
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("a quorum listener failed")
