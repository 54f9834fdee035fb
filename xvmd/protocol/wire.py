"""The fence_xvm wire format: bytes in, typed values out, and back.

Rules for this module:
1. No I/O, no clock, no randomness of its own: callers pass random bytes in.
2. It knows the layout of the 176-byte request and of the hostlist stream, nothing about
   keys or sessions (see ``auth`` and ``session``).

Layout of ``fence_req_t`` (packed, 176 bytes; the three integers travel little-endian):

    off  size  field
      0     1  request   op code (Op)
      1     1  hashtype  HashType of the signature
      2     1  addrlen   4 or 16; never read by a daemon
      3     1  flags     bit 0 = RF_UUID; never read by a daemon
      4    64  domain    NUL-padded VM name or UUID text
     68    28  address   raw in_addr / in6_addr of the caller, zero-padded
     96     2  port      TCP callback port, <H
     98     6  random    salt, zero when unsigned
    104     4  seqno     <I, the same for every copy and retransmit of one request
    108     4  family    <I, 2 = AF_INET, 10 = AF_INET6 (0 over TCP)
    112    64  hash      digest of key || packet-with-zero-hash, zero-padded
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from xvmd.protocol.drops import DropReason

REQUEST_SIZE = 176
DOMAIN_SIZE = 64
ADDRESS_SIZE = 28
ADDRESS_OFFSET = 68
HASH_OFFSET = 112
HASH_SIZE = 64
CHALLENGE_SIZE = 64
HOST_RECORD_SIZE = 130

AF_INET_WIRE = 2
AF_INET6_WIRE = 10

RF_UUID = 0x01

_HEAD = struct.Struct("<BBBB64s28sH6sII")
assert _HEAD.size == HASH_OFFSET


class Op(enum.IntEnum):
    """Request codes (``fence_cmd_t``)."""

    NULL = 0
    OFF = 1
    REBOOT = 2
    ON = 3
    STATUS = 4
    DEVSTATUS = 5
    HOSTLIST = 6

    @property
    def label(self) -> str:
        """The name an operator knows from ``fence_xvm -o``."""
        return _OP_LABELS[self]

    @property
    def is_power_action(self) -> bool:
        return self in (Op.OFF, Op.REBOOT, Op.ON)

    @property
    def needs_domain(self) -> bool:
        return self in (Op.OFF, Op.REBOOT, Op.ON, Op.STATUS)


_OP_LABELS = {
    Op.NULL: "null",
    Op.OFF: "off",
    Op.REBOOT: "reboot",
    Op.ON: "on",
    Op.STATUS: "status",
    Op.DEVSTATUS: "monitor",
    Op.HOSTLIST: "list",
}


class HashType(enum.IntEnum):
    """Digest used for request signatures and the challenge-response (``fence_hash_t``)."""

    NONE = 0
    SHA1 = 1
    SHA256 = 2
    SHA512 = 3

    @classmethod
    def from_name(cls, name: str) -> HashType:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown hash {name!r} (choose none, sha1, sha256, sha512)") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Result(enum.IntEnum):
    """The one result byte the daemon writes at the end of a session."""

    SUCCESS = 0
    FAIL = 1
    OFF = 2
    PERM = 3
    HOSTLIST = 0xFD

    @property
    def label(self) -> str:
        return _RESULT_LABELS[self]


_RESULT_LABELS = {
    Result.SUCCESS: "success",
    Result.FAIL: "failed",
    Result.OFF: "off",
    Result.PERM: "denied",
    Result.HOSTLIST: "hostlist",
}


class MalformedRequest(ValueError):
    """The bytes are not a request we can act on; ``reason`` names its drop counter."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FenceRequest:
    """One decoded ``fence_req_t``; ``raw`` keeps the exact bytes for signature checks."""

    op: Op
    hashtype: HashType
    addrlen: int
    flags: int
    domain: str
    address: str | None
    port: int
    random: bytes
    seqno: int
    family: int
    digest: bytes
    raw: bytes

    @property
    def shown_target(self) -> str:
        """The target as log lines show it: quoted, or ``-`` when the request names none."""
        return repr(self.domain) if self.domain else "-"

    @property
    def packed_address(self) -> bytes:
        """The address as the packet carries it: 4 or 16 bytes, empty for no known family."""
        size = {AF_INET_WIRE: 4, AF_INET6_WIRE: 16}.get(self.family, 0)
        return self.raw[ADDRESS_OFFSET : ADDRESS_OFFSET + size]

    @property
    def callback(self) -> tuple[str, int] | None:
        """Where the client listens for our connection, or None when the packet names no address."""
        if self.address is None or self.port == 0:
            return None
        return (self.address, self.port)


def _decode_domain(field: bytes) -> str:
    name = field.split(b"\0", 1)[0]
    # libvirt names are UTF-8; undecodable bytes can name no domain, so keep them visible.
    return name.decode("utf-8", errors="backslashreplace")


def _decode_address(family: int, field: bytes) -> str | None:
    if family == AF_INET_WIRE:
        return str(ipaddress.IPv4Address(field[:4]))
    if family == AF_INET6_WIRE:
        return str(ipaddress.IPv6Address(field[:16]))
    return None


def parse_request(data: bytes) -> FenceRequest:
    """Decode a 176-byte request.

    Raises:
        MalformedRequest: wrong size, unknown op, hash type or address family.
    """
    if len(data) != REQUEST_SIZE:
        raise MalformedRequest(
            DropReason.SIZE, f"request is {len(data)} bytes, expected {REQUEST_SIZE}"
        )
    op_b, hash_b, addrlen, flags, domain, address, port, rnd, seqno, family = _HEAD.unpack_from(
        data
    )
    try:
        op = Op(op_b)
    except ValueError:
        raise MalformedRequest(DropReason.OP, f"unknown request code {op_b}") from None
    try:
        hashtype = HashType(hash_b)
    except ValueError:
        raise MalformedRequest(DropReason.HASHTYPE, f"unknown hash type {hash_b}") from None
    if family not in (0, AF_INET_WIRE, AF_INET6_WIRE):
        raise MalformedRequest(DropReason.FAMILY, f"unknown address family {family}")
    return FenceRequest(
        op=op,
        hashtype=hashtype,
        addrlen=addrlen,
        flags=flags,
        domain=_decode_domain(domain),
        address=_decode_address(family, address),
        port=port,
        random=rnd,
        seqno=seqno,
        family=family,
        digest=data[HASH_OFFSET:],
        raw=bytes(data),
    )


def encode_request(
    op: Op,
    domain: str = "",
    *,
    address: str | None = None,
    port: int = 0,
    seqno: int = 0,
    hashtype: HashType = HashType.NONE,
    random: bytes = b"\0" * 6,
    flags: int = 0,
) -> bytes:
    """Build an unsigned request (hash field zero); ``auth.sign_request`` fills the hash.

    Used by tests and the benchmark load generator; the daemon never sends a request.
    """
    dom = domain.encode()
    if len(dom) >= DOMAIN_SIZE:
        raise ValueError(f"domain is {len(dom)} bytes; at most {DOMAIN_SIZE - 1} fit")
    if len(random) != 6:
        raise ValueError("random must be 6 bytes")
    if address is None:
        family, addrlen, addr = 0, 0, b""
    else:
        ip = ipaddress.ip_address(address)
        family = AF_INET_WIRE if ip.version == 4 else AF_INET6_WIRE
        addr = ip.packed
        addrlen = len(addr)
    head = _HEAD.pack(
        int(op), int(hashtype), addrlen, flags, dom, addr, port, random, seqno, family
    )
    return head + b"\0" * HASH_SIZE


@dataclass(frozen=True, slots=True)
class HostRecord:
    """One ``host_state_t`` of the hostlist: the name, UUID text and raw libvirt state."""

    name: str
    uuid: str
    state: int

    def encode(self) -> bytes:
        name = self.name.encode()[: DOMAIN_SIZE - 1]
        uuid = self.uuid.encode()[: DOMAIN_SIZE - 1]
        # Zero-filled on purpose: the reference daemon leaks stack bytes into 63, 127 and 129.
        return struct.pack("<64s64sBx", name, uuid, self.state & 0xFF)


HOSTLIST_TERMINATOR = b"\0" * HOST_RECORD_SIZE


def encode_hostlist(records: Iterable[HostRecord], final: Result = Result.SUCCESS) -> bytes:
    """The hostlist stream: 0xFD, records sorted case-insensitively, terminator, final byte."""
    ordered = sorted(records, key=lambda r: (r.name.casefold(), r.name))
    parts = [bytes([Result.HOSTLIST])]
    parts.extend(r.encode() for r in ordered)
    parts.append(HOSTLIST_TERMINATOR)
    parts.append(bytes([int(final)]))
    return b"".join(parts)


def decode_host_record(data: bytes) -> HostRecord | None:
    """Decode one 130-byte record as the client does; None for the terminator."""
    if len(data) != HOST_RECORD_SIZE:
        raise ValueError(f"host record is {len(data)} bytes, expected {HOST_RECORD_SIZE}")
    name = data[:DOMAIN_SIZE].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    uuid = data[DOMAIN_SIZE : 2 * DOMAIN_SIZE].split(b"\0", 1)[0].decode("ascii", errors="replace")
    if not name and not uuid:
        return None
    return HostRecord(name, uuid, data[128])
