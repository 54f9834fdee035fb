"""The corosync C libraries behind one small seam: ``CorosyncLibrary`` and its ctypes side.

``CorosyncLibrary`` is the handful of calls the source (``source.py``) makes, with every C error
turned into a ``CorosyncError``; ``CtypesCorosync`` implements it over libquorum, libvotequorum,
libcmap and libcfg, loaded by soname (``load_library``), and the unit tests pass a fake.

Each method is one C call (two for ``cmap_get``, an iteration for ``cmap_get_prefix``) and never
waits or retries: CS_ERR_TRY_AGAIN and CS_ERR_QUEUE_FULL come back as a ``CorosyncError`` whose
``busy`` is true, and the caller asks again later from the event loop. This runs on the event
loop thread, which must never sleep.

This module (and a future cpg binding beside it) is the only user of ctypes in xvmd.quorum.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from xvmd.quorum.corotypes import (
    CMAP_KEYNAME_MAXLEN,
    CS_ERR_NO_SECTIONS,
    CS_ERR_NOT_EXIST,
    CS_OK,
    CmapValue,
    CorosyncError,
    VoteInfo,
    decode_cmap_value,
    sockaddr_address,
)

log = logging.getLogger("xvmd.quorum")

SONAMES = {
    "quorum": "libquorum.so.5",
    "votequorum": "libvotequorum.so.8",
    "cmap": "libcmap.so.4",
    "cfg": "libcfg.so.7",
}

NotifyFn = Callable[[bool, int, tuple[int, ...]], None]
"""Python side of the quorum v0 notify callback: (quorate, ring_seq, view node ids)."""


class CorosyncLibrary(Protocol):
    """The few corosync calls xvmd makes, with C errors turned into ``CorosyncError``.

    Implementations answer at once: a busy corosync (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL) is a
    ``CorosyncError`` like any other, never a wait.
    """

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


# --- the real libraries (ctypes) -------------------------------------------------------------

_QUORUM_NOTIFY = ctypes.CFUNCTYPE(
    None,
    ctypes.c_uint64,
    ctypes.c_uint32,
    ctypes.c_uint64,
    ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_uint32),
)


class QuorumCallbacks(ctypes.Structure):
    """``quorum_callbacks_t`` (v0: the notify function only)."""

    _fields_ = [("quorum_notify_fn", _QUORUM_NOTIFY)]


class VotequorumCallbacks(ctypes.Structure):
    """``votequorum_callbacks_t``, left empty: only ``votequorum_getinfo`` is used."""

    _fields_ = [
        ("quorum_notify_fn", ctypes.c_void_p),
        ("expectedvotes_notify_fn", ctypes.c_void_p),
        ("nodelist_notify_fn", ctypes.c_void_p),
    ]


class VotequorumInfo(ctypes.Structure):
    """``struct votequorum_info``."""

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


class CfgNodeAddress(ctypes.Structure):
    """``corosync_cfg_node_address_t``: a sockaddr_in/sockaddr_in6 in 28 bytes."""

    _fields_ = [("address_length", ctypes.c_int), ("address", ctypes.c_ubyte * 28)]


_H = ctypes.c_uint64
_P = ctypes.c_void_p  # pointers are passed with byref()/arrays; declared as opaque
_MAX_ADDRS = 8  # knet links


def _declare(lib: ctypes.CDLL, name: str, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int
    fn.argtypes = list(argtypes)
    return fn


def cs_call(name: str, fn: Callable[..., Any], *args: Any) -> None:
    """One C call: ``CorosyncError`` unless it returned CS_OK. Never retried, never waits."""
    rc = int(fn(*args))
    if rc != CS_OK:
        raise CorosyncError(name, rc)


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
        self._callbacks: dict[int, tuple[Any, QuorumCallbacks]] = {}

    # quorum

    def quorum_initialize(self, notify: NotifyFn) -> tuple[int, int]:
        def trampoline(_h: int, quorate: int, ring_seq: int, n: int, view: Any) -> None:
            try:
                ids = tuple(int(view[i]) for i in range(n)) if n and view else ()
                notify(bool(quorate), int(ring_seq), ids)
            except Exception:  # never let an exception unwind into C
                log.exception("error in the corosync quorum notification handler")

        cfunc = _QUORUM_NOTIFY(trampoline)
        callbacks = QuorumCallbacks(cfunc)
        handle = ctypes.c_uint64()
        quorum_type = ctypes.c_uint32()
        cs_call(
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
        cs_call("quorum_fd_get", self._q_fd, handle, ctypes.byref(fd))
        return fd.value

    def quorum_getquorate(self, handle: int) -> bool:
        quorate = ctypes.c_int()
        cs_call("quorum_getquorate", self._q_getquorate, handle, ctypes.byref(quorate))
        return bool(quorate.value)

    def quorum_trackstart(self, handle: int, flags: int) -> None:
        cs_call("quorum_trackstart", self._q_trackstart, handle, flags)

    def quorum_dispatch(self, handle: int, flags: int) -> None:
        cs_call("quorum_dispatch", self._q_dispatch, handle, flags)

    def quorum_finalize(self, handle: int) -> None:
        try:
            cs_call("quorum_finalize", self._q_finalize, handle)
        finally:
            self._callbacks.pop(handle, None)

    # votequorum

    def votequorum_initialize(self) -> int:
        handle = ctypes.c_uint64()
        callbacks = VotequorumCallbacks()  # no callbacks: getinfo only
        cs_call(
            "votequorum_initialize", self._vq_init, ctypes.byref(handle), ctypes.byref(callbacks)
        )
        return handle.value

    def votequorum_getinfo(self, handle: int, nodeid: int) -> VoteInfo:
        info = VotequorumInfo()
        cs_call("votequorum_getinfo", self._vq_getinfo, handle, nodeid, ctypes.byref(info))
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
        cs_call("votequorum_finalize", self._vq_finalize, handle)

    # cmap

    def cmap_initialize(self) -> int:
        handle = ctypes.c_uint64()
        cs_call("cmap_initialize", self._cmap_init, ctypes.byref(handle))
        return handle.value

    def cmap_get(self, handle: int, key: str) -> CmapValue:
        name = key.encode()
        length = ctypes.c_size_t()
        value_type = ctypes.c_int()
        cs_call("cmap_get", self._cmap_get, handle, name, None, ctypes.byref(length), None)
        buf = ctypes.create_string_buffer(max(1, length.value))
        length = ctypes.c_size_t(len(buf))
        cs_call(
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
        cs_call("cmap_iter_init", self._cmap_iter_init, handle, raw_prefix, ctypes.byref(it))
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
        cs_call("cmap_finalize", self._cmap_finalize, handle)

    # cfg

    def cfg_initialize(self) -> int:
        handle = ctypes.c_uint64()
        cs_call("corosync_cfg_initialize", self._cfg_init, ctypes.byref(handle), None)
        return handle.value

    def cfg_get_node_addrs(self, handle: int, nodeid: int) -> tuple[str, ...]:
        addrs = (CfgNodeAddress * _MAX_ADDRS)()
        count = ctypes.c_int()
        cs_call(
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
        cs_call("corosync_cfg_local_get", self._cfg_local, handle, ctypes.byref(nodeid))
        return nodeid.value

    def cfg_finalize(self, handle: int) -> None:
        cs_call("corosync_cfg_finalize", self._cfg_finalize, handle)


def load_library() -> CorosyncLibrary:
    """The real libraries; raises ``OSError`` when they are not installed."""
    return CtypesCorosync()
