"""An asyncio fence_xvm client for load and probes, built on ``xvmd.protocol`` (wire, auth).

Each request gets its own TCP callback listener and a fresh seqno; like the stock client it
retransmits the same datagram every ``retrans`` seconds until the daemon calls back.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
import time
from dataclasses import dataclass

from xvmd.protocol.auth import Key, sign_request
from xvmd.protocol.wire import (
    CHALLENGE_SIZE,
    DOMAIN_SIZE,
    HOST_RECORD_SIZE,
    HashType,
    Op,
    Result,
    encode_request,
)

GROUP = "225.0.0.12"
AUTH = HashType.SHA256


@dataclass(frozen=True, slots=True)
class Reply:
    result: int | None  # None: lost (no callback in time) or the session broke
    seconds: float  # from the first send to the result byte (or the give-up)
    sends: int
    error: str = ""
    records: int = 0


class Client:
    """Sends requests to ``dest`` (the group or 127.0.0.1) and serves their callbacks."""

    def __init__(self, key: Key, port: int, unicast: bool = False) -> None:
        self.key = key
        self.dest = ("127.0.0.1" if unicast else GROUP, port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        lo = socket.inet_aton("127.0.0.1")
        self.udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, lo)
        self.udp.setblocking(False)
        self._seq = itertools.count(random.randrange(1 << 24))

    def close(self) -> None:
        self.udp.close()

    def packet(self, op: Op, domain: str, port: int) -> bytes:
        raw = encode_request(
            op,
            domain,
            address="127.0.0.1",
            port=port,
            seqno=next(self._seq) & 0xFFFFFFFF,
            hashtype=AUTH,
            random=os.urandom(6),
        )
        return sign_request(raw, AUTH, self.key)

    async def request(
        self, op: Op, domain: str, *, retrans: float = 2.0, timeout: float = 10.0
    ) -> Reply:
        loop = asyncio.get_running_loop()
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lst.setblocking(False)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(("127.0.0.1", 0))
            lst.listen(4)
            pkt = self.packet(op, domain, lst.getsockname()[1])
            t0 = time.perf_counter()
            deadline = t0 + timeout
            sends = 0
            # One accept for all retransmits, never cancelled while it may hold a connection:
            # cancelling an accept that just completed would drop the daemon's callback.
            accept = asyncio.ensure_future(loop.sock_accept(lst))
            while not accept.done():
                left = deadline - time.perf_counter()
                if left <= 0:
                    accept.cancel()
                    return Reply(None, time.perf_counter() - t0, sends, "no callback")
                self.udp.sendto(pkt, self.dest)
                sends += 1
                await asyncio.wait((accept,), timeout=min(retrans, left))
            conn, _ = accept.result()
            with conn:
                conn.setblocking(False)
                try:
                    async with asyncio.timeout(max(deadline - time.perf_counter(), 0.5)):
                        result, records, err = await self._session(loop, conn, op)
                except TimeoutError:
                    result, records, err = None, 0, "session timed out"
            return Reply(result, time.perf_counter() - t0, sends, err, records)
        finally:
            lst.close()

    async def _session(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, op: Op
    ) -> tuple[int | None, int, str]:
        c1 = os.urandom(CHALLENGE_SIZE)
        await loop.sock_sendall(conn, c1)
        r1 = await _recv_exact(loop, conn, CHALLENGE_SIZE)
        if r1 != self.key.digest(AUTH, c1):
            return None, 0, "daemon failed our challenge"
        c2 = await _recv_exact(loop, conn, CHALLENGE_SIZE)
        if len(c2) != CHALLENGE_SIZE:
            return None, 0, "no challenge from the daemon"
        await loop.sock_sendall(conn, self.key.digest(AUTH, c2))
        first = await _recv_exact(loop, conn, 1)
        if not first:
            return None, 0, "closed before the result byte"
        if first[0] != Result.HOSTLIST or op is not Op.HOSTLIST:
            return first[0], 0, ""
        records = 0
        while True:
            rec = await _recv_exact(loop, conn, HOST_RECORD_SIZE)
            if len(rec) != HOST_RECORD_SIZE:
                return None, records, "hostlist cut short"
            if rec[0] == 0 and rec[DOMAIN_SIZE] == 0:  # as the stock client: no name, no UUID
                break
            records += 1
        await _recv_exact(loop, conn, 1)
        return Result.SUCCESS, records, ""


async def _recv_exact(loop: asyncio.AbstractEventLoop, conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(conn, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf
