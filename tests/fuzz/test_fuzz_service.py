"""Fuzzing ``FenceService`` in-process, with a FakeBackend, ``Policy.unrestricted`` and one key.

Invariants:
- no forged or mutated datagram reaches a connect-back, a session or the backend, and each is
  counted as exactly one drop;
- forged datagrams interleaved with genuine ones change nothing but their own drop counters
  (the same genuine traffic without them leaves the service in the same state);
- sessions never exceed ``max_sessions``; when the callbacks are done, no history entry and no
  task is left behind;
- arbitrary TCP byte streams (from a callback client or on the ``fence_virt -T`` listener)
  never authenticate, never get more than the 128 bytes of the handshake, never reach the
  backend.

Datagram tests replace ``tcp.connect_back`` by a recorder, so nothing is sent anywhere; the TCP
stream tests use real sockets on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from unittest import mock

from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz import corpus
from tests.fuzz.corpus import FIELDS, KEY, OTHER_KEY, fuzz_settings
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.executor import BackendRunner
from xvmd.core.limits import Limits
from xvmd.core.operations import Clock
from xvmd.core.policy import Policy
from xvmd.core.service import FenceService, Hashes
from xvmd.net import tcp
from xvmd.protocol.history import CALLBACK_BACKOFF
from xvmd.protocol.session import STREAM_REQUEST_TIMEOUT
from xvmd.protocol.wire import CHALLENGE_SIZE, REQUEST_SIZE, HashType, Op

VM = DomainInfo("vm-01", "00000000-0000-4000-8000-000000000001", DomainState.RUNNING)
FORGED_REASONS = {"size", "hashtype", "weak-hash", "no-key", "bad-signature"}


def make_service(max_sessions: int = 64, **limits: int) -> tuple[FenceService, FakeBackend]:
    backend = FakeBackend([VM])
    runner = BackendRunner(backend, Clock(time.monotonic, time.sleep), workers=2)
    service = FenceService(
        Hashes(HashType.SHA256, HashType.SHA256),
        Policy.unrestricted([KEY]),
        runner,
        limits=Limits(max_sessions=max_sessions, **limits),
        now=time.monotonic,
    )
    return service, backend


class Callbacks:
    """Stands in for ``tcp.connect_back``: records the call, waits for ``release``, fails."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = asyncio.Event()

    async def __call__(self, address: str, port: int, timeout: float = 5.0) -> tcp.Channel:
        self.calls.append((address, port))
        await self.gate.wait()
        raise tcp.CallbackFailed("test: the client cannot be reached")


@contextlib.contextmanager
def recorded_callbacks() -> Iterator[Callbacks]:
    fake = Callbacks()
    with mock.patch.object(tcp, "connect_back", fake):
        yield fake


async def settle(service: FenceService, timeout: float = 5.0) -> None:
    """Wait until every spawned session has ended; then no quota place may be left taken."""
    async with asyncio.timeout(timeout):
        await service.idle()
    assert not service.active_sessions, f"{service.active_sessions} quota places still taken"


# -- strategies --------------------------------------------------------------------------------

seqnos = st.integers(0, 3)
ports = st.sampled_from([1, 2, 40000])
addresses = st.sampled_from(["127.0.0.1", "127.0.0.2", "::1", None])


@st.composite
def genuine(draw: st.DrawFn) -> bytes:
    return corpus.signed(
        draw(st.sampled_from(list(Op))),
        draw(st.sampled_from(["vm-01", "VM-01", "other", ""])),
        hashtype=draw(st.sampled_from([HashType.SHA256, HashType.SHA512])),
        address=draw(addresses),
        port=draw(ports),
        seqno=draw(seqnos),
        salt=draw(st.binary(min_size=6, max_size=6)),
    )


@st.composite
def forged(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.binary(max_size=2 * REQUEST_SIZE))
    if kind == 1:
        return draw(st.binary(min_size=REQUEST_SIZE, max_size=REQUEST_SIZE))
    base = draw(genuine())
    if kind == 2:  # bit flips
        bits = draw(st.lists(st.integers(0, REQUEST_SIZE * 8 - 1), min_size=1, max_size=6))
        out = corpus.flip_bits(base, sorted(set(bits)))
    elif kind == 3:  # one field to an extreme or random value
        name = draw(st.sampled_from(list(FIELDS)))
        size = FIELDS[name][1]
        value = draw(
            st.sampled_from(corpus.EXTREMES[name]) | st.binary(min_size=size, max_size=size)
        )
        out = corpus.set_field(base, name, value)
    elif kind == 4:  # another key
        out = corpus.resign(base, OTHER_KEY)
    elif kind == 5:  # a weaker hash than configured, correctly signed
        out = corpus.signed(
            Op.OFF, "vm-01", hashtype=draw(st.sampled_from([HashType.NONE, HashType.SHA1]))
        )
    else:  # truncated or extended
        n = draw(st.integers(0, 400).filter(lambda n: n != REQUEST_SIZE))
        out = (base * 3)[:n]
    if out == base:
        out = corpus.flip_bits(base, [draw(st.integers(0, REQUEST_SIZE * 8 - 1))])
    return out


# -- datagrams ---------------------------------------------------------------------------------


@fuzz_settings(300)
@given(st.lists(forged(), min_size=1, max_size=40))
def test_forged_datagrams_have_no_effect_but_a_drop_count(datagrams: list[bytes]) -> None:
    async def scenario() -> tuple[FenceService, FakeBackend, Callbacks]:
        service, backend = make_service()
        with recorded_callbacks() as callbacks:
            for data in datagrams:
                service.datagram_received(data, ("192.0.2.1", 1229))
            await asyncio.sleep(0)
            callbacks.gate.set()
            await settle(service)
        return service, backend, callbacks

    service, backend, callbacks = asyncio.run(scenario())
    assert callbacks.calls == []
    assert backend.calls == []
    assert service.active_sessions == 0
    assert len(service.history) == 0
    assert not service.stats.served
    assert set(service.stats.dropped) <= FORGED_REASONS
    assert sum(service.stats.dropped.values()) == len(datagrams)


def _forged_hypothesis_input() -> st.SearchStrategy[list[tuple[bool, bytes]]]:
    item = st.tuples(st.just(True), genuine()) | st.tuples(st.just(False), forged())
    return st.lists(item, max_size=40)


@fuzz_settings(200)
@given(_forged_hypothesis_input(), st.integers(1, 6))
def test_forged_datagrams_do_not_change_how_genuine_ones_are_handled(
    items: list[tuple[bool, bytes]], max_sessions: int
) -> None:
    async def run(datagrams: list[bytes]) -> dict[str, object]:
        service, backend = make_service(max_sessions)
        with recorded_callbacks() as callbacks:
            for data in datagrams:
                service.datagram_received(data, ("192.0.2.1", 1229))
                assert service.active_sessions <= max_sessions
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            state: dict[str, object] = {
                "connects": list(callbacks.calls),
                "active": service.active_sessions,
                "history": len(service.history),
            }
            callbacks.gate.set()
            await settle(service)
        assert backend.calls == []
        # Every failed callback backs off for a moment, then is forgotten.
        service.history.expire(time.monotonic() + CALLBACK_BACKOFF)
        assert len(service.history) == 0
        state["connects_total"] = list(callbacks.calls)
        state["dropped"] = Counter(service.stats.dropped)
        return state

    with_forged = asyncio.run(run([d for _, d in items]))
    without = asyncio.run(run([d for ok, d in items if ok]))
    dropped_with = with_forged.pop("dropped")
    dropped_without = without.pop("dropped")
    assert with_forged == without
    assert isinstance(dropped_with, Counter) and isinstance(dropped_without, Counter)
    n_forged = sum(1 for ok, _ in items if not ok)
    extra = dropped_with - dropped_without
    assert set(extra) <= FORGED_REASONS and sum(extra.values()) == n_forged
    assert with_forged["active"] <= max_sessions  # type: ignore[operator]


def test_a_flood_of_stalled_genuine_requests_is_bounded_by_max_sessions() -> None:
    """10,000 distinct requests whose callbacks hang: 64 sessions, the rest dropped as busy,
    at most 64 history entries, and everything gone once the callbacks fail."""

    async def scenario() -> None:
        service, backend = make_service()
        packets = [corpus.signed(Op.OFF, "vm-01", seqno=i, port=1000 + i) for i in range(10_000)]
        with recorded_callbacks() as callbacks:
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for p in packets:
                    service.datagram_received(p, ("127.0.0.1", 1))
                await asyncio.sleep(0)
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert service.active_sessions == 64
            assert len(callbacks.calls) == 64
            assert service.stats.dropped["busy"] == 10_000 - 64
            assert len(service.history) == 64
            assert grown < 2 * 1024 * 1024, grown  # 64 sessions' worth, not 10,000
            callbacks.gate.set()
            await settle(service)
        assert backend.calls == []
        assert service.stats.dropped["callback-failed"] == 64
        service.history.expire(time.monotonic() + CALLBACK_BACKOFF)
        assert len(service.history) == 0

    asyncio.run(scenario())


def test_a_flood_to_one_callback_address_holds_only_its_own_quota() -> None:
    """Sniffed requests naming one callback address and port (whose SYNs are dropped) take at
    most ``per_callback`` sessions; a request calling back elsewhere is still served."""

    async def scenario() -> None:
        service, _ = make_service()
        packets = [corpus.signed(Op.STATUS, "vm-01", seqno=i, port=1229) for i in range(600)]
        with recorded_callbacks() as callbacks:
            for p in packets:
                service.datagram_received(p, ("127.0.0.1", 1))
            assert service.active_sessions == Limits().per_callback
            assert service.stats.dropped["callback-busy"] == 600 - Limits().per_callback
            other = corpus.signed(Op.OFF, "vm-01", seqno=9999, port=4000)
            service.datagram_received(other, ("127.0.0.1", 1))
            await asyncio.sleep(0)
            assert callbacks.calls[-1] == ("127.0.0.1", 4000)
            callbacks.gate.set()
            await settle(service)

    asyncio.run(scenario())


def test_forged_flood_does_not_grow_memory() -> None:
    import random

    rng = random.Random(1229)
    base = corpus.signed(Op.OFF, "vm-01")
    pool = [base, corpus.signed(Op.ON, "vm-02", seqno=9)]
    datagrams = [corpus.mutate(rng, base, pool) for _ in range(20_000)]
    datagrams = [d for d in datagrams if d not in pool]

    async def scenario() -> int:
        service, backend = make_service()
        with recorded_callbacks() as callbacks:
            for d in datagrams[:2000]:  # warm-up: counters, caches
                service.datagram_received(d, ("127.0.0.1", 1))
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for d in datagrams[2000:]:
                    service.datagram_received(d, ("127.0.0.1", 1))
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert callbacks.calls == [] and backend.calls == []
        assert sum(service.stats.dropped.values()) == len(datagrams)
        return grown

    assert asyncio.run(scenario()) < 64 * 1024


def test_copies_of_one_pending_request_do_not_grow_memory_without_bound() -> None:
    async def scenario() -> tuple[int, int]:
        service, _ = make_service()
        # Each copy's fingerprint is kept for replay refusal, up to a bound per signing key
        # (16,384 by default, about 2 MB); a small bound here shows memory stops at it.
        service.intake.replays.max_entries = 1000
        copies = [corpus.signed(Op.OFF, "vm-01", seqno=5, port=1 + i) for i in range(20_001)]
        with recorded_callbacks() as callbacks:
            service.datagram_received(copies[0], ("127.0.0.1", 1))
            await asyncio.sleep(0)  # the first callback is now in progress
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for p in copies[1:2_001]:
                    service.datagram_received(p, ("127.0.0.1", 1))
                small = tracemalloc.get_traced_memory()[0] - before
                for p in copies[2_001:]:
                    service.datagram_received(p, ("127.0.0.1", 1))
                large = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
                await service.drain(0)
            assert len(callbacks.calls) == 1
        return small, large

    small, large = asyncio.run(scenario())
    assert large < small + 256 * 1024, (small, large)


# -- TCP byte streams on 127.0.0.1 -------------------------------------------------------------


async def _read_all(reader: asyncio.StreamReader, limit: float = 5.0) -> bytes:
    got = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while True:
            data = await asyncio.wait_for(reader.read(4096), timeout=limit)
            if not data:
                break
            got += data
    return bytes(got)


def _check_handshake_only(sent: bytes, received: bytes) -> None:
    """At most R1 + C2 (128 bytes): never a result byte, R1 the right answer to C1."""
    assert len(received) <= 2 * CHALLENGE_SIZE, received.hex()
    event(f"received {len(received)} bytes")
    if len(sent) >= CHALLENGE_SIZE:
        answer = KEY.digest(HashType.SHA256, sent[:CHALLENGE_SIZE])
        assert received[:CHALLENGE_SIZE] == answer[: len(received)]
    else:
        assert received == b""


streams = st.lists(st.binary(max_size=150), max_size=6)


@fuzz_settings(60)
@given(streams, st.sampled_from(["blind", "answer-flipped"]), st.integers(0, 64 * 8 - 1))
def test_callback_streams_never_authenticate(chunks: list[bytes], mode: str, bit: int) -> None:
    """A genuine request whose callback client then sends arbitrary bytes."""

    async def scenario() -> tuple[bytes, bytes, FenceService, FakeBackend]:
        service, backend = make_service()
        sent = bytearray()
        received = bytearray()
        done = asyncio.Event()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if mode == "answer-flipped":
                    c1 = os.urandom(CHALLENGE_SIZE)
                    writer.write(c1)
                    sent.extend(c1)
                    head = await asyncio.wait_for(reader.readexactly(128), timeout=5)
                    received.extend(head)
                    wrong = corpus.flip_bits(KEY.digest(HashType.SHA256, head[64:]), [bit])
                    writer.write(wrong)
                    sent.extend(wrong)
                for chunk in chunks:
                    writer.write(chunk)
                    sent.extend(chunk)
                    await writer.drain()
                writer.write_eof()
                received.extend(await _read_all(reader))
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                done.set()

        server = await asyncio.start_server(client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        packet = corpus.signed(Op.OFF, "vm-01", port=port, seqno=int.from_bytes(os.urandom(3)))
        service.datagram_received(packet, ("127.0.0.1", 1))
        await asyncio.wait_for(done.wait(), timeout=10)
        await settle(service)
        server.close()
        await server.wait_closed()
        service.runner.shutdown()
        return bytes(sent), bytes(received), service, backend

    sent, received, service, backend = asyncio.run(scenario())
    _check_handshake_only(sent, received)
    assert backend.calls == []
    assert service.stats.dropped["auth-failed"] == 1
    assert not service.stats.served


@fuzz_settings(60)
@given(st.booleans(), st.none() | st.binary(min_size=64, max_size=64), streams)
def test_listener_streams_never_authenticate(
    with_request: bool, c1: bytes | None, chunks: list[bytes]
) -> None:
    """The ``fence_virt -T`` listener fed arbitrary bytes, after a genuine request or not
    (and then, sometimes, a challenge, so that the daemon answers it and waits)."""
    if c1 is not None:
        chunks = [c1, *chunks]

    async def scenario() -> tuple[bytes, bytes, FenceService, FakeBackend]:
        service, backend = make_service()
        server = await tcp.start_listener("127.0.0.1", 0, service.stream_client)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = corpus.signed(Op.OFF, "vm-01", address=None) if with_request else b""
        body = b"".join(chunks)
        try:
            writer.write(head)
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            received = await _read_all(reader)
        except ConnectionError:
            received = b""
        finally:
            writer.close()
        await settle(service)
        server.close()
        await server.wait_closed()
        service.runner.shutdown()
        return (body if with_request else b""), received, service, backend

    sent, received, service, backend = asyncio.run(scenario())
    _check_handshake_only(sent, received)
    assert backend.calls == []
    assert not service.stats.served


def test_a_correct_client_is_served_by_the_same_harness() -> None:
    """Positive control: the stream harness does reach the backend when the client has the key."""

    async def scenario() -> tuple[bytes, FakeBackend]:
        service, backend = make_service()
        result = bytearray()
        finished = asyncio.Event()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            c1 = os.urandom(CHALLENGE_SIZE)
            writer.write(c1)
            head = await reader.readexactly(128)
            assert head[:64] == KEY.digest(HashType.SHA256, c1)
            writer.write(KEY.digest(HashType.SHA256, head[64:]))
            result.extend(await _read_all(reader))
            writer.close()
            finished.set()

        server = await asyncio.start_server(client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        service.datagram_received(corpus.signed(Op.STATUS, "vm-01", port=port), ("127.0.0.1", 1))
        await settle(service)
        async with asyncio.timeout(5):
            await finished.wait()
        server.close()
        service.runner.shutdown()
        return bytes(result), backend

    result, backend = asyncio.run(scenario())
    assert result == b"\0"
    assert backend.calls


def test_silent_listener_clients_are_cut_off_after_the_request_timeout() -> None:
    """100 clients connect to the ``-T`` listener and send part of a request, then nothing: 32
    get a place (the listener's own quota), the rest are refused as busy, and every connection
    is closed by xvmd within STREAM_REQUEST_TIMEOUT (1 s), leaving no session behind."""

    async def scenario() -> tuple[list[float], FenceService]:
        service, backend = make_service(per_peer=1000)  # every client comes from 127.0.0.1
        server = await tcp.start_listener("127.0.0.1", 0, service.stream_client)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def silent() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(corpus.signed(Op.OFF, "vm-01", address=None)[:100])
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            return loop.time() - t0

        ends = await asyncio.gather(*(silent() for _ in range(100)))
        await settle(service)
        server.close()
        await server.wait_closed()
        service.runner.shutdown()
        assert backend.calls == []
        return list(ends), service

    ends, service = asyncio.run(scenario())
    assert max(ends) < STREAM_REQUEST_TIMEOUT + 1.0, max(ends)
    assert service.stats.dropped["stream-incomplete"] == Limits().max_stream
    assert service.stats.dropped["listener-busy"] == 100 - Limits().max_stream
    assert service.active_sessions == 0
