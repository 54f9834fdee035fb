"""Load generator and probes: many status requests in flight, each checked against its domain."""

from __future__ import annotations

import asyncio
import itertools
import resource
import select
import socket
import time
from collections import Counter
from collections.abc import Mapping

from xvmd.protocol.auth import Key
from xvmd.protocol.client import ClientError, ClientSession
from xvmd.protocol.wire import Op

from .client import Client, Reply, session

RETRANS = 2.0  # the stock client's -r 20
LOST_AFTER = 10.0


def _rusage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


CALLBACK_PORTS = range(10_000, 30_000)
"""Callback ports of the load generator, below the namespace's ephemeral range (env.Netns)."""
_next_port = itertools.cycle(CALLBACK_PORTS)


def _listener(address: str) -> socket.socket:
    """A callback listener on the next free port of CALLBACK_PORTS.

    Tens of thousands of finished callbacks sit in TIME_WAIT; ``bind(0)`` would scan the
    whole ephemeral range past them on every call (seconds of kernel CPU per thousand
    requests after some 20,000), while an explicit port with SO_REUSEADDR binds at once.
    """
    for _ in range(1000):
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.setblocking(False)
        try:
            lst.bind((address, next(_next_port)))
        except OSError:
            lst.close()
            continue
        lst.listen(4)
        return lst
    raise RuntimeError("no free callback port")


class _Req:
    """One status request of the load run, from its datagram to its result byte."""

    __slots__ = ("conn", "last_send", "lst", "name", "pkt", "sends", "session", "t0")

    def __init__(self, name: str, lst: socket.socket, pkt: bytes, now: float) -> None:
        self.name = name
        self.lst = lst
        self.pkt = pkt
        self.conn: socket.socket | None = None
        self.session: ClientSession | None = None
        self.t0 = self.last_send = now
        self.sends = 1


def load(
    key: Key,
    port: int,
    expected: Mapping[str, int],
    count: int,
    concurrency: int,
    *,
    max_seconds: float,
    unicast: bool = False,
    address: str = "127.0.0.1",
) -> dict[str, object]:
    """``count`` status requests, ``concurrency`` in flight, round-robin over ``expected``.

    Every request has its own callback listener and seqno. Like the stock client, a request
    without a callback is re-sent every 2 s; it is *lost* after 10 s, *wrong* when its result
    byte is not the domain's expected status. A bare epoll loop (no asyncio) keeps the
    generator's own CPU per request low, so that it saturates as late as possible.
    """
    client = Client(key, port, unicast, address)
    names = sorted(expected)
    ep = select.epoll()
    by_fd: dict[int, _Req] = {}
    latencies: list[float] = []
    wrong: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    retransmits = issued = 0
    in_flight: set[_Req] = set()
    perf = time.perf_counter

    def begin() -> None:
        nonlocal issued
        name = names[issued % len(names)]
        issued += 1
        lst = _listener(address)
        req = _Req(name, lst, client.packet(Op.STATUS, name, lst.getsockname()[1]), perf())
        by_fd[lst.fileno()] = req
        ep.register(lst.fileno(), select.EPOLLIN)
        in_flight.add(req)
        client.udp.sendto(req.pkt, client.dest)

    def finish(req: _Req, result: int | None, error: str = "") -> None:
        for s in (req.lst, req.conn):
            if s is not None and s.fileno() >= 0:
                by_fd.pop(s.fileno(), None)
                ep.unregister(s.fileno())
                s.close()
        in_flight.discard(req)
        if result is None:
            errors[error] += 1
        elif result != expected[req.name]:
            wrong[f"{req.name}: {result} (expected {expected[req.name]})"] += 1
        else:
            latencies.append((perf() - req.t0) * 1000)

    def step(req: _Req) -> None:
        if req.conn is None:
            conn, _ = req.lst.accept()
            by_fd.pop(req.lst.fileno())
            ep.unregister(req.lst.fileno())
            req.lst.close()
            conn.setblocking(False)
            req.conn = conn
            req.session = session(key, Op.STATUS)
            conn.send(req.session.data_to_send())
            by_fd[conn.fileno()] = req
            ep.register(conn.fileno(), select.EPOLLIN)
            return
        assert req.session is not None
        try:
            data = req.conn.recv(req.session.bytes_wanted)
            answer = req.session.receive_data(data) if data else req.session.connection_closed()
        except ClientError as exc:
            finish(req, None, exc.reason)
            return
        if answer is not None:
            finish(req, answer.status)
        else:
            out = req.session.data_to_send()
            if out:
                req.conn.send(out)

    def timers(now: float) -> None:
        nonlocal retransmits
        for req in list(in_flight):
            if now - req.t0 > LOST_AFTER:
                finish(req, None, "no answer in 10 s")
            elif req.conn is None and now - req.last_send >= RETRANS:
                client.udp.sendto(req.pkt, client.dest)
                req.last_send = now
                req.sends += 1
                retransmits += 1

    u0, s0 = _rusage()
    t0 = perf()
    t_stop = t0 + max_seconds
    next_timers = t0 + 0.1
    try:
        while True:
            now = perf()
            while len(in_flight) < concurrency and issued < count and now < t_stop:
                begin()
            if not in_flight:
                break
            for fd, _ev in ep.poll(0.05):
                req = by_fd.get(fd)
                if req is None:
                    continue
                try:
                    step(req)
                except OSError as exc:
                    finish(req, None, type(exc).__name__)
            if now >= next_timers:
                timers(now)
                next_timers = now + 0.1
            if now > t_stop + LOST_AFTER:
                for req in list(in_flight):
                    finish(req, None, "run stopped")
    finally:
        for req in list(in_flight):
            finish(req, None, "run stopped")
        ep.close()
        client.close()
    wall = perf() - t0
    u1, s1 = _rusage()
    done = len(latencies) + sum(wrong.values()) + sum(errors.values())
    return {
        "requested": count,
        "done": done,
        "ok": len(latencies),
        "lost": sum(errors.values()),
        "errors": dict(errors),
        "wrong": sum(wrong.values()),
        "wrong_detail": dict(wrong.most_common(5)),
        "retransmits": retransmits,
        "concurrency": concurrency,
        "wall_s": wall,
        "throughput": len(latencies) / wall if wall > 0 else 0.0,
        "client_cpu_s": (u1 - u0) + (s1 - s0),
        "latency_ms": [round(x, 3) for x in latencies],
    }


async def probe(
    key: Key,
    port: int,
    target: str,
    expect: int,
    seconds: float,
    interval: float,
    *,
    unicast: bool = True,
) -> dict[str, object]:
    """One status request every ``interval`` s for ``seconds`` s, on a fixed schedule."""
    client = Client(key, port, unicast)
    replies: list[Reply] = []

    async def one() -> None:
        replies.append(await client.request(Op.STATUS, target, timeout=8.0))

    tasks = []
    t0 = time.perf_counter()
    try:
        for i in range(max(int(seconds / interval), 1)):
            await asyncio.sleep(max(t0 + i * interval - time.perf_counter(), 0))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    finally:
        client.close()
    ok = [r.seconds * 1000 for r in replies if r.result == expect]
    return {
        "sent": len(replies),
        "ok": len(ok),
        "lost": sum(1 for r in replies if r.result is None),
        "wrong": sum(1 for r in replies if r.result is not None and r.result != expect),
        "retransmitted": sum(1 for r in replies if r.sends > 1),
        "latency_ms": [round(x, 3) for x in ok],
    }


async def poll(
    key: Key, port: int, target: str, expect: set[int], interval: float, timeout: float
) -> dict[str, object]:
    """Ask for ``target``'s status until the answer is in ``expect``; when did it come?

    Each attempt retransmits its datagram every ``interval`` s (one seqno, so a daemon that
    starts meanwhile sees copies of one request, not a queue of distinct ones).
    """
    client = Client(key, port)
    deadline = time.monotonic() + timeout
    attempts = 0
    last: int | None = None
    try:
        while time.monotonic() < deadline:
            attempts += 1
            left = deadline - time.monotonic()
            reply = await client.request(Op.STATUS, target, retrans=interval, timeout=left)
            last = reply.result
            if reply.result in expect:
                return {"at": time.monotonic(), "result": reply.result, "attempts": attempts}
            await asyncio.sleep(interval)
    finally:
        client.close()
    raise TimeoutError(f"no answer in {sorted(expect)} within {timeout}s (last {last})")
