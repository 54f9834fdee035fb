"""Multicast (and unicast) datagram listeners."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from collections.abc import Callable

IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
IPV6_MULTICAST_ALL = 29
RECV_BUFFER = 4 * 1024 * 1024

DatagramHandler = Callable[[bytes, tuple[str, int]], None]


def open_multicast_socket(group: str, port: int, ifindex: int) -> socket.socket:
    """Bind the wildcard address on ``port`` and join ``group`` on interface ``ifindex`` (0: any).

    Binding the wildcard means unicast datagrams to any local address on the port are served
    too, as with fence_virtd. No SO_REUSEADDR: a second daemon on the same port must fail to
    start instead of silently answering the same requests.

    Raises:
        OSError: the port is in use, or the group cannot be joined.
    """
    ip = ipaddress.ip_address(group)
    if ip.version == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            # Receive only the groups this socket joined, not every group any socket joined.
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.bind(("0.0.0.0", port))
            join(sock, group, ifindex)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            sock.bind(("::", port))
            join(sock, group, ifindex)
        except OSError:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, handler: DatagramHandler) -> None:
        self._handler = handler

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._handler(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on an unconnected UDP socket say nothing about our requests.
        return None


async def listen(sock: socket.socket, handler: DatagramHandler) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(handler), sock=sock)
    return transport


def join(sock: socket.socket, group: str, ifindex: int) -> bool:
    """Join ``group`` on ``ifindex`` (0: the interface the routing table picks); also used to
    join again after the interface was re-created or came back.

    Returns True when a new membership was added, False when it was there already.

    Raises:
        OSError: the join failed for another reason.
    """
    ip = ipaddress.ip_address(group)
    try:
        if ip.version == 4:
            mreqn = struct.pack("4s4si", ip.packed, b"\0" * 4, ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        else:
            mreq = struct.pack("16sI", ip.packed, ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        raise
    return True
