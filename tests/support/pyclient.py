"""A minimal fence_xvm client in Python, for tests that need exact control over the bytes.

The real ``/usr/sbin/fence_xvm`` drives the end-to-end tests; this client covers what it cannot
do: replay one packet twice, point the callback at a closed port, send ``null``, flood garbage.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from xvmd.protocol.auth import Key, sign_request
from xvmd.protocol.wire import (
    CHALLENGE_SIZE,
    HOST_RECORD_SIZE,
    HashType,
    HostRecord,
    Op,
    decode_host_record,
    encode_request,
)


@dataclass
class Reply:
    result: int | None  # the result byte; None when no callback came or it ended early
    records: list[HostRecord]
    connected: bool


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
    rnd = os.urandom(6) if hashtype is not HashType.NONE else b"\0" * 6
    raw = encode_request(
        op, domain, address=address, port=port, seqno=seq, hashtype=hashtype, random=rnd
    )
    return sign_request(raw, hashtype, key)


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


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def exchange(conn: socket.socket, key: Key, auth: HashType, op: Op) -> Reply:
    """Run the client side of the TCP phase on an accepted or connected socket."""
    if auth is not HashType.NONE:
        c1 = os.urandom(CHALLENGE_SIZE)
        conn.sendall(c1)
        r1 = _recv_exact(conn, CHALLENGE_SIZE)
        if r1 != key.digest(auth, c1):
            return Reply(None, [], True)
        c2 = _recv_exact(conn, CHALLENGE_SIZE)
        if len(c2) != CHALLENGE_SIZE:
            return Reply(None, [], True)
        conn.sendall(key.digest(auth, c2))
    first = _recv_exact(conn, 1)
    if not first:
        return Reply(None, [], True)
    records: list[HostRecord] = []
    if first[0] == 0xFD and op is Op.HOSTLIST:
        while True:
            rec = _recv_exact(conn, HOST_RECORD_SIZE)
            if len(rec) != HOST_RECORD_SIZE:
                return Reply(None, records, True)
            decoded = decode_host_record(rec)
            if decoded is None:
                break
            records.append(decoded)
        _recv_exact(conn, 1)
    return Reply(first[0], records, True)


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
