"""A minimal fence_xvm client in Python, for tests that need exact control over the bytes.

The real ``/usr/sbin/fence_xvm`` drives the end-to-end tests; this client covers what it cannot
do: replay one packet twice, point the callback at a closed port, send ``null``, flood garbage.
The protocol is ``xvmd.protocol.client``; this module only adds blocking sockets and randomness.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from xvmd.protocol.auth import Key
from xvmd.protocol.client import ClientError, ClientSession, build_request, drive
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType, HostRecord, Op


@dataclass
class Reply:
    result: int | None  # the result byte (0xFD for a hostlist); None: no callback, or it broke
    records: list[HostRecord]
    connected: bool
    error: str = ""  # ClientError.reason when the exchange broke


def build(
    op: Op,
    domain: str,
    key: Key,
    *,
    hashtype: HashType = HashType.SHA256,
    address: str | None = "127.0.0.1",
    port: int = 0,
    seqno: int | None = None,
) -> bytes:
    seq = seqno if seqno is not None else int.from_bytes(os.urandom(3), "little")
    return build_request(
        op,
        domain,
        key=key,
        hashtype=hashtype,
        address=address,
        port=port,
        seqno=seq,
        salt=os.urandom(6),
    )


def callback_listener(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(4)
    return srv


def send_datagram(packet: bytes, dest: tuple[str, int]) -> None:
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.sendto(packet, dest)


def exchange(conn: socket.socket, key: Key, auth: HashType, op: Op) -> Reply:
    """Run the client side of the TCP phase on an accepted or connected socket."""
    session = ClientSession(op, auth=auth, key=key, challenge=os.urandom(CHALLENGE_SIZE))
    try:
        answer = drive(session, conn.recv, conn.sendall)
    except ClientError as exc:
        return Reply(None, [], True, exc.reason)
    return Reply(answer.result, list(answer.records), True)


def request(
    packet: bytes,
    dest: tuple[str, int],
    listener: socket.socket,
    key: Key,
    *,
    auth: HashType = HashType.SHA256,
    op: Op = Op.STATUS,
    wait: float = 3.0,
) -> Reply:
    """Send ``packet`` (its callback must point at ``listener``) and serve one callback."""
    send_datagram(packet, dest)
    return serve_callback(listener, key, auth=auth, op=op, wait=wait)


def serve_callback(
    listener: socket.socket, key: Key, *, auth: HashType, op: Op, wait: float
) -> Reply:
    listener.settimeout(wait)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return Reply(None, [], False)
    with conn:
        conn.settimeout(10)
        return exchange(conn, key, auth, op)
