"""Addresses as a fencing daemon judges them: where no client can listen, and what counts as one
sender. Pure: no sockets, no name resolution.
"""

from __future__ import annotations

import ipaddress

_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def callback_problem(packed: bytes) -> str | None:
    """Why no client can be listening at the ``packed`` address (4 or 16 bytes, as the packet
    carries it), or None. Works on the bytes: this runs for every verified datagram."""
    if len(packed) == 16 and packed[:12] == _V4_MAPPED:
        packed = packed[12:]
    if len(packed) == 4:
        if packed == b"\0\0\0\0":
            return "an unspecified address"
        if 224 <= packed[0] <= 239:
            return "a multicast address"
        if packed == b"\xff\xff\xff\xff":
            return "the broadcast address"
        return None
    if packed == bytes(16):
        return "an unspecified address"
    if packed[0] == 0xFF:
        return "a multicast address"
    if packed[0] == 0xFE and packed[1] & 0xC0 == 0x80:
        return "an IPv6 link-local address (no scope can be known)"
    return None


def sender(address: str) -> str:
    """What the per-peer cap counts as one sender: an IPv4 address, or an IPv6 /64 (one host
    may own a whole /64 and pick a new address per connection)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
