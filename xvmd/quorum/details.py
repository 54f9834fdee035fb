"""The details behind a status, from corosync's helper services, best effort.

Quorum and membership come from the quorum service's own notifications; these are the cheap
local extras read after each one: the local node's votes (votequorum), the cluster name and the
nodelist (cmap), each member's link addresses and the local node id (cfg).

Rules:
1. Each service has its own handle, opened when first needed; after CS_ERR_LIBRARY or
   CS_ERR_BAD_HANDLE it is closed and reopened on the next read.
2. A failure only leaves that service's fields empty: quorum tracking never depends on them.
3. A busy service (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL) is not waited for: ``HelperServices.read``
   says so and the caller reads again later. Meanwhile the configuration a busy service gave
   last time (cmap's names, cfg's addresses) stands in; the votes, which are state, do not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from xvmd.quorum.binding import CorosyncLibrary
from xvmd.quorum.corotypes import (
    CS_ERR_BAD_HANDLE,
    CS_ERR_LIBRARY,
    ClusterConfig,
    CorosyncError,
    VoteInfo,
    parse_nodelist,
)

log = logging.getLogger("xvmd.quorum")


@dataclass
class Details:
    """What the helper services answered in one read."""

    vote: VoteInfo | None = None  # votequorum
    cluster: ClusterConfig | None = None  # cmap
    local_nodeid: int | None = None  # cfg
    addresses: dict[int, tuple[str, ...]] = field(default_factory=dict)  # cfg


# --- the three services ------------------------------------------------------------------------


def _read_votequorum(
    lib: CorosyncLibrary, handle: int, view: tuple[int, ...], out: Details
) -> None:
    out.vote = lib.votequorum_getinfo(handle, 0)


def _read_cmap(lib: CorosyncLibrary, handle: int, view: tuple[int, ...], out: Details) -> None:
    cluster = parse_nodelist(lib.cmap_get_prefix(handle, "nodelist."))
    try:
        name = lib.cmap_get(handle, "totem.cluster_name")
    except CorosyncError as e:
        if e.busy:
            raise
        name = None
    out.cluster = replace(cluster, name=name if isinstance(name, str) else None)


def _read_cfg(lib: CorosyncLibrary, handle: int, view: tuple[int, ...], out: Details) -> None:
    out.local_nodeid = lib.cfg_local_get(handle) or None
    for nodeid in view:
        out.addresses[nodeid] = lib.cfg_get_node_addrs(handle, nodeid)


def _keep_nothing(out: Details, last: Details) -> None:
    """Votes are state: an old count would mislead, so a busy votequorum leaves them empty."""


def _keep_cluster(out: Details, last: Details) -> None:
    out.cluster = last.cluster


def _keep_addresses(out: Details, last: Details) -> None:
    out.local_nodeid = out.local_nodeid or last.local_nodeid
    out.addresses = {**last.addresses, **out.addresses}


@dataclass(frozen=True, slots=True)
class _Service:
    name: str
    open: Callable[[CorosyncLibrary], int]
    read: Callable[[CorosyncLibrary, int, tuple[int, ...], Details], None]
    close: Callable[[CorosyncLibrary, int], None]
    keep: Callable[[Details, Details], None]  # while busy: what of the last answer stands in


_SERVICES = (
    _Service(
        "votequorum",
        lambda lib: lib.votequorum_initialize(),
        _read_votequorum,
        lambda lib, handle: lib.votequorum_finalize(handle),
        _keep_nothing,
    ),
    _Service(
        "cmap",
        lambda lib: lib.cmap_initialize(),
        _read_cmap,
        lambda lib, handle: lib.cmap_finalize(handle),
        _keep_cluster,
    ),
    _Service(
        "cfg",
        lambda lib: lib.cfg_initialize(),
        _read_cfg,
        lambda lib, handle: lib.cfg_finalize(handle),
        _keep_addresses,
    ),
)


# --- one session's helpers ---------------------------------------------------------------------


class HelperServices:
    """The helper-service handles of one corosync session and their last answers."""

    def __init__(self, lib: CorosyncLibrary) -> None:
        self._lib = lib
        self._handles: dict[str, int] = {}
        self.details = Details()

    def read(self, view: tuple[int, ...]) -> bool:
        """Ask every service again (``view``: whose addresses); True when one was busy."""
        last, new = self.details, Details()
        busy = False
        for service in _SERVICES:
            if self._ask(service, view, new):
                service.keep(new, last)
                busy = True
        self.details = new
        return busy

    def close(self) -> None:
        for service in _SERVICES:
            handle = self._handles.pop(service.name, None)
            if handle is not None:
                try:
                    service.close(self._lib, handle)
                except Exception as e:  # finalize after a lost connection may complain
                    log.debug("corosync finalize: %s", e)

    def _ask(self, service: _Service, view: tuple[int, ...], out: Details) -> bool:
        """Open (if need be) and read one service into ``out``; True when it was busy."""
        handle = self._handles.get(service.name)
        try:
            if handle is None:
                handle = self._handles[service.name] = service.open(self._lib)
            service.read(self._lib, handle, view, out)
        except CorosyncError as e:
            log.debug("corosync %s service: %s", service.name, e)
            if handle is not None and e.code in (CS_ERR_LIBRARY, CS_ERR_BAD_HANDLE):
                del self._handles[service.name]  # gone: reopened next time
                with contextlib.suppress(Exception):
                    service.close(self._lib, handle)
            return e.busy
        except Exception:
            log.exception("unexpected error reading corosync details (ignored)")
        return False
