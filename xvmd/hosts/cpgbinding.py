"""corosync's closed process groups (libcpg) behind one small seam: ``CpgLibrary``.

``CpgLibrary`` is the handful of calls the group (``group.py``) makes, with every C error turned
into a ``CorosyncError`` (xvmd.quorum.corotypes); ``CtypesCpg`` implements it over libcpg.so.4,
loaded by soname (``load_cpg``), and the unit tests pass a fake.

Rules:

- Each method is one C call and never waits or retries: CS_ERR_TRY_AGAIN and CS_ERR_QUEUE_FULL
  come back as a ``CorosyncError`` whose ``busy`` is true, and the caller asks again later from
  the event loop, which must never sleep.
- The callbacks run inside ``dispatch`` on the caller's thread. The trampolines copy what C
  handed them (payload bytes, member arrays) into Python values before returning, and never
  let an exception unwind into C.
- One handle joins one group (corosync 3 keeps one group per connection).

This module and xvmd/quorum/binding.py are the only users of ctypes in xvmd.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xvmd.quorum.corotypes import CS_DISPATCH_ALL, CS_OK, CorosyncError

log = logging.getLogger("xvmd.hosts")

SONAME = "libcpg.so.4"

# cpg.h
CPG_MODEL_V1 = 1
CPG_TYPE_AGREED = 2  # enum {UNORDERED, FIFO, AGREED, SAFE}; corosync orders all as agreed
CPG_MAX_NAME_LENGTH = 128
CPG_MEMBERS_MAX = 128
CPG_REASON_JOIN = 1
CPG_REASON_LEAVE = 2
CPG_REASON_NODEDOWN = 3
CPG_REASON_NODEUP = 4
CPG_REASON_PROCDOWN = 5


@dataclass(frozen=True, slots=True)
class CpgAddress:
    """``struct cpg_address``: one process in a group (``reason`` is a CPG_REASON_*)."""

    nodeid: int
    pid: int
    reason: int = 0


Members = tuple[CpgAddress, ...]

DeliverFn = Callable[[int, int, bytes], None]
"""A delivered message: (sender nodeid, sender pid, payload)."""

ConfchgFn = Callable[[Members, Members, Members], None]
"""A group membership change: (members, left, joined)."""


class CpgLibrary(Protocol):
    """The libcpg calls xvmd makes, with C errors turned into ``CorosyncError``.

    Implementations answer at once: a busy corosync is a ``CorosyncError`` like any other.
    """

    def initialize(self, deliver: DeliverFn, confchg: ConfchgFn) -> int:
        """A new connection (``cpg_model_initialize``, model v1); returns its handle."""
        ...

    def join(self, handle: int, name: bytes) -> None: ...

    def leave(self, handle: int, name: bytes) -> None: ...

    def mcast(self, handle: int, payload: bytes) -> None:
        """Multicast to the joined group, in agreed (total) order."""
        ...

    def membership(self, handle: int, name: bytes) -> list[tuple[int, int]]:
        """(nodeid, pid) of every process in the group."""
        ...

    def local_nodeid(self, handle: int) -> int: ...

    def fd(self, handle: int) -> int: ...

    def dispatch(self, handle: int) -> None:
        """Run the callbacks of every pending event (CS_DISPATCH_ALL); never blocks."""
        ...

    def finalize(self, handle: int) -> None: ...


# --- the real library (ctypes) ---------------------------------------------------------------


class CpgName(ctypes.Structure):
    """``struct cpg_name``."""

    _fields_ = [("length", ctypes.c_uint32), ("value", ctypes.c_char * CPG_MAX_NAME_LENGTH)]


class CpgAddressStruct(ctypes.Structure):
    """``struct cpg_address``."""

    _fields_ = [("nodeid", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("reason", ctypes.c_uint32)]


class Iovec(ctypes.Structure):
    """``struct iovec``."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_ADDRS = ctypes.POINTER(CpgAddressStruct)
_DELIVER = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.POINTER(CpgName),
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_void_p,
    ctypes.c_size_t,
)
_CONFCHG = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.POINTER(CpgName),
    _ADDRS,
    ctypes.c_size_t,
    _ADDRS,
    ctypes.c_size_t,
    _ADDRS,
    ctypes.c_size_t,
)


class CpgModelV1Data(ctypes.Structure):
    """``cpg_model_v1_data_t``; no totem confchg callback (the group view is enough)."""

    _fields_ = [
        ("model", ctypes.c_int),
        ("cpg_deliver_fn", _DELIVER),
        ("cpg_confchg_fn", _CONFCHG),
        ("cpg_totem_confchg_fn", ctypes.c_void_p),
        ("flags", ctypes.c_uint),
    ]


_H = ctypes.c_uint64
_P = ctypes.c_void_p  # pointers are passed with byref()/arrays; declared as opaque


def _declare(lib: ctypes.CDLL, name: str, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int
    fn.argtypes = list(argtypes)
    return fn


def _call(name: str, fn: Callable[..., Any], *args: Any) -> None:
    """One C call: ``CorosyncError`` unless it returned CS_OK."""
    rc = int(fn(*args))
    if rc != CS_OK:
        raise CorosyncError(name, rc)


def cpg_name(name: bytes) -> CpgName:
    if len(name) > CPG_MAX_NAME_LENGTH:
        raise ValueError(f"a CPG group name has at most {CPG_MAX_NAME_LENGTH} bytes")
    out = CpgName()
    out.length = len(name)
    out.value = name  # copied into the array (reading .value would give a copy instead)
    return out


def _addresses(array: Any, count: int) -> Members:
    n = max(0, min(int(count), CPG_MEMBERS_MAX))
    if not n or not array:
        return ()
    return tuple(CpgAddress(int(a.nodeid), int(a.pid), int(a.reason)) for a in array[:n])


class CtypesCpg:
    """``CpgLibrary`` over the real libcpg, loaded by soname."""

    def __init__(self, soname: str = SONAME) -> None:
        lib = ctypes.CDLL(soname)
        self._init = _declare(lib, "cpg_model_initialize", _P, ctypes.c_int, _P, _P)
        self._join = _declare(lib, "cpg_join", _H, _P)
        self._leave = _declare(lib, "cpg_leave", _H, _P)
        self._mcast = _declare(lib, "cpg_mcast_joined", _H, ctypes.c_int, _P, ctypes.c_uint)
        self._membership = _declare(lib, "cpg_membership_get", _H, _P, _P, _P)
        self._local = _declare(lib, "cpg_local_get", _H, _P)
        self._fd = _declare(lib, "cpg_fd_get", _H, _P)
        self._dispatch = _declare(lib, "cpg_dispatch", _H, ctypes.c_int)
        self._finalize = _declare(lib, "cpg_finalize", _H)
        # handle -> the model data with its CFUNCTYPE objects: C calls them until finalize.
        self._callbacks: dict[int, CpgModelV1Data] = {}

    def initialize(self, deliver: DeliverFn, confchg: ConfchgFn) -> int:
        def on_deliver(_h: int, _name: Any, nodeid: int, pid: int, msg: Any, size: int) -> None:
            try:
                payload = ctypes.string_at(msg, size) if size else b""
                deliver(int(nodeid), int(pid), payload)
            except Exception:  # never let an exception unwind into C
                log.exception("error in the CPG deliver callback")

        def on_confchg(
            _h: int, _name: Any, m: Any, nm: int, lf: Any, nl: int, jn: Any, nj: int
        ) -> None:
            try:
                confchg(_addresses(m, nm), _addresses(lf, nl), _addresses(jn, nj))
            except Exception:  # never let an exception unwind into C
                log.exception("error in the CPG confchg callback")

        data = CpgModelV1Data(CPG_MODEL_V1, _DELIVER(on_deliver), _CONFCHG(on_confchg), None, 0)
        handle = ctypes.c_uint64()
        _call(
            "cpg_model_initialize",
            self._init,
            ctypes.byref(handle),
            CPG_MODEL_V1,
            ctypes.byref(data),
            None,
        )
        self._callbacks[handle.value] = data
        return handle.value

    def join(self, handle: int, name: bytes) -> None:
        _call("cpg_join", self._join, handle, ctypes.byref(cpg_name(name)))

    def leave(self, handle: int, name: bytes) -> None:
        _call("cpg_leave", self._leave, handle, ctypes.byref(cpg_name(name)))

    def mcast(self, handle: int, payload: bytes) -> None:
        buf = ctypes.c_char_p(payload)  # points into the bytes object, alive for the call
        iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(payload))
        _call("cpg_mcast_joined", self._mcast, handle, CPG_TYPE_AGREED, ctypes.byref(iov), 1)

    def membership(self, handle: int, name: bytes) -> list[tuple[int, int]]:
        # libcpg copies as many entries as corosync sends (at most CPG_MEMBERS_MAX): the array
        # must have room for all of them whatever the count says.
        array = (CpgAddressStruct * CPG_MEMBERS_MAX)()
        count = ctypes.c_int(CPG_MEMBERS_MAX)
        group = cpg_name(name)
        _call(
            "cpg_membership_get",
            self._membership,
            handle,
            ctypes.byref(group),
            array,
            ctypes.byref(count),
        )
        return [(a.nodeid, a.pid) for a in _addresses(array, count.value)]

    def local_nodeid(self, handle: int) -> int:
        nodeid = ctypes.c_uint()
        _call("cpg_local_get", self._local, handle, ctypes.byref(nodeid))
        return nodeid.value

    def fd(self, handle: int) -> int:
        fd = ctypes.c_int()
        _call("cpg_fd_get", self._fd, handle, ctypes.byref(fd))
        return fd.value

    def dispatch(self, handle: int) -> None:
        _call("cpg_dispatch", self._dispatch, handle, CS_DISPATCH_ALL)

    def finalize(self, handle: int) -> None:
        try:
            _call("cpg_finalize", self._finalize, handle)
        finally:
            self._callbacks.pop(handle, None)


def load_cpg() -> CpgLibrary:
    """The real libcpg; ``OSError`` (saying what to install) when it is missing."""
    try:
        return CtypesCpg()
    except OSError as e:
        raise OSError(f"{SONAME} not found (install corosync): {e}") from e
    except AttributeError as e:  # an old libcpg without cpg_model_initialize
        raise OSError(f"{SONAME} lacks a call xvmd needs: {e}") from e
