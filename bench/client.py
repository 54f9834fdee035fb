"""fence_xvm clients for load and probes: I/O shells over ``xvmd.protocol.client``.

``Client`` is the asyncio one: each request gets its own TCP callback listener and a fresh
seqno, and like the stock client it retransmits the same datagram every ``retrans`` seconds
until the daemon calls back. ``probe_once`` is a blocking one, for threaded probers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
import time
from dataclasses import dataclass

from xvmd.protocol.auth import Key
from xvmd.protocol.client import Answer, ClientError, ClientSession, build_request, drive
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType, Op

GROUP = "225.0.0.12"
AUTH = HashType.SHA256
_LO = socket.inet_aton("127.0.0.1")


@dataclass(frozen=True, slots=True)
class Reply:
    result: int | None  # None: lost (no callback in time) or the session broke
    seconds: float  # from the first send to the result byte (or the give-up)
    sends: int
    error: str = ""  # why result is None: "no callback", a ClientError reason, ...
    records: int = 0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One blocking request (``probe_once``); times in monotonic seconds."""

    sent: float
    callback: float | None = None  # seconds from the send until the daemon connected back
    latency: float | None = None  # seconds from the send until the answer; None: none came
    result: int | None = None
    error: str = ""


def packet(
    key: Key, op: Op, domain: str, port: int, seqno: int, address: str = "127.0.0.1"
) -> bytes:
    """A request signed with AUTH whose callback is ``address``:``port``."""
    return build_request(
        op,
        domain,
        key=key,
        hashtype=AUTH,
        address=address,
        port=port,
        seqno=seqno & 0xFFFFFFFF,
        salt=os.urandom(6),
    )


def session(key: Key, op: Op) -> ClientSession:
    """The TCP exchange of one request, with a fresh challenge."""
    return ClientSession(op, auth=AUTH, key=key, challenge=os.urandom(CHALLENGE_SIZE))


class Client:
    """Sends requests to ``dest`` (the group or 127.0.0.1) and serves their callbacks."""

    def __init__(
        self, key: Key, port: int, unicast: bool = False, address: str = "127.0.0.1"
    ) -> None:
        self.key = key
        self.address = address  # callbacks, and the interface multicast leaves by
        self.dest = ("127.0.0.1" if unicast else GROUP, port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        self.udp.setblocking(False)
        self._seq = itertools.count(random.randrange(1 << 24))

    def close(self) -> None:
        self.udp.close()

    def packet(self, op: Op, domain: str, port: int) -> bytes:
        return packet(self.key, op, domain, port, next(self._seq), self.address)

    async def request(
        self, op: Op, domain: str, *, retrans: float = 2.0, timeout: float = 10.0
    ) -> Reply:
        loop = asyncio.get_running_loop()
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lst.setblocking(False)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind((self.address, 0))
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
                        answer = await _exchange(loop, conn, session(self.key, op))
                except TimeoutError:
                    return Reply(None, time.perf_counter() - t0, sends, "session timed out")
                except ClientError as exc:
                    return Reply(None, time.perf_counter() - t0, sends, exc.reason)
            seconds = time.perf_counter() - t0
            return Reply(answer.status, seconds, sends, records=len(answer.records))
        finally:
            lst.close()


async def _exchange(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, s: ClientSession
) -> Answer:
    """Run ``s`` on a non-blocking socket (the asyncio twin of ``drive``)."""
    while True:
        out = s.data_to_send()
        if out:
            await loop.sock_sendall(conn, out)
        if s.answer is not None:
            return s.answer
        data = await loop.sock_recv(conn, s.bytes_wanted)
        if not data:
            return s.connection_closed()
        s.receive_data(data)


def probe_once(key: Key, op: Op, domain: str, dest: tuple[str, int], wait: float) -> ProbeResult:
    """One blocking request: send it once, wait ``wait`` s for the callback, run the exchange.
    Failures after the send (no callback, a socket error, a broken exchange) are in ``error``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(wait)
        pkt = packet(key, op, domain, listener.getsockname()[1], random.getrandbits(32))
        sent = time.monotonic()
        callback: float | None = None
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _LO)
                udp.sendto(pkt, dest)
            conn, _ = listener.accept()
            callback = time.monotonic() - sent
            with conn:
                conn.settimeout(10)
                answer = drive(session(key, op), conn.recv, conn.sendall)
        except OSError as exc:  # TimeoutError included: no callback within ``wait``
            return ProbeResult(sent, callback, error=f"{type(exc).__name__}: {exc}")
        except ClientError as exc:
            return ProbeResult(sent, callback, error=exc.reason)
        return ProbeResult(sent, callback, time.monotonic() - sent, answer.status)
