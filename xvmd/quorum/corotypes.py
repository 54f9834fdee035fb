"""corosync's vocabulary as Python values (pure): constants, errors, decoded answers.

Named after corotypes.h. The constants mirror corotypes.h, quorum.h and cmap.h; ``CorosyncError``
is a call that did not return CS_OK (``busy`` when corosync asked to be asked again); the
dataclasses are what the ``CorosyncLibrary`` seam (``binding.py``) returns, and the decoders turn
raw cmap values, the cmap nodelist and libcfg's sockaddrs into them. No ctypes, no event loop, no
clock, no I/O.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass

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

# sa_family_t values of the sockaddrs libcfg returns (Linux, as corosync itself; a unit test
# checks them against the socket module, which this pure module does not import).
AF_INET = 2
AF_INET6 = 10

# --- errors ----------------------------------------------------------------------------------


def cs_error_name(code: int) -> str:
    return _CS_ERRORS.get(code, f"CS_ERR_{code}")


class CorosyncError(Exception):
    """A corosync library call returned something other than CS_OK."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call}: {cs_error_name(code)}")
        self.call = call
        self.code = code

    @property
    def busy(self) -> bool:
        """corosync asked to be asked again (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL)."""
        return self.code in (CS_ERR_TRY_AGAIN, CS_ERR_QUEUE_FULL)


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


# --- decoders ------------------------------------------------------------------------------------


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
    entries: dict[int, dict[str, CmapValue]] = {}
    for key, value in values.items():
        parts = key.split(".")
        if len(parts) != 4 or parts[:2] != ["nodelist", "node"] or not parts[2].isdigit():
            continue
        entries.setdefault(int(parts[2]), {})[parts[3]] = value
    nodes = tuple(_node_config(pos, entries[pos]) for pos in sorted(entries))
    local_pos = values.get("nodelist.local_node_pos")
    local = None
    for node in nodes:
        if node.pos == local_pos:
            local = node.nodeid
    return ClusterConfig(nodes=nodes, local_nodeid=local)


def _node_config(pos: int, entry: Mapping[str, CmapValue]) -> NodeConfig:
    """One node's ``nodelist.node.<pos>.*`` attributes (``nodeid``, ``name``, ``ringX_addr``)."""
    nodeid = entry.get("nodeid")
    name = entry.get("name")
    rings: list[tuple[int, str]] = []
    for attr, value in entry.items():
        if attr.startswith("ring") and attr.endswith("_addr") and isinstance(value, str):
            index = attr[4:-5]
            if index.isdigit() and value:
                rings.append((int(index), value))
    return NodeConfig(
        pos=pos,
        nodeid=nodeid if isinstance(nodeid, int) and nodeid > 0 else None,
        name=name if isinstance(name, str) and name else None,
        ring_addrs=tuple(addr for _, addr in sorted(rings)),
    )


def sockaddr_address(raw: bytes) -> str | None:
    """The IP of a ``sockaddr_in``/``sockaddr_in6`` (as in ``corosync_cfg_node_address_t``)."""
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], sys.byteorder)  # sa_family_t is in host order
    if family == AF_INET and len(raw) >= 8:
        return str(ipaddress.IPv4Address(raw[4:8]))
    if family == AF_INET6 and len(raw) >= 24:
        addr = ipaddress.IPv6Address(raw[8:24])
        return str(addr.ipv4_mapped or addr)
    return None


def vote_flag_words(flags: int) -> str:
    """votequorum flags as ``corosync-quorumtool`` words, e.g. ``"Quorate WaitForAll"``."""
    return " ".join(word for bit, word in _VOTEQUORUM_FLAGS if flags & bit)
