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


BATCH = 256
"""Datagrams read per wake-up: a flood costs one event-loop iteration per batch, not per packet."""


class DatagramEndpoint:
    """Reads a UDP socket from the event loop, draining up to BATCH datagrams per wake-up.

    asyncio's datagram transport reads one datagram per loop iteration; under a flood of
    forged packets that per-iteration cost (epoll, scheduling) dwarfs the rejection itself.
    """

    def __init__(self, sock: socket.socket, handler: DatagramHandler) -> None:
        self._sock = sock
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        recvfrom, handler = self._sock.recvfrom, self._handler
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors queued on an unconnected socket say nothing about requests.
                continue
            handler(data, addr)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


async def listen(sock: socket.socket, handler: DatagramHandler) -> DatagramEndpoint:
    return DatagramEndpoint(sock, handler)


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
