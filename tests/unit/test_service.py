"""FenceService on loopback with a fake backend: the pipeline's bounds and drop accounting."""

from __future__ import annotations

import asyncio
import os
import time

from tests.support import pyclient
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.executor import BackendRunner
from xvmd.operations import Clock
from xvmd.policy import Policy
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import HashType, Op
from xvmd.service import Auth, FenceService

KEY = Key(os.urandom(64))
VM = DomainInfo("vm", "00000000-0000-4000-8000-000000000001", DomainState.RUNNING)


def make_service(max_sessions: int) -> FenceService:
    runner = BackendRunner(FakeBackend([VM]), Clock(time.monotonic, time.sleep), workers=4)
    return FenceService(
        Auth(HashType.SHA256, HashType.SHA256),
        Policy.unrestricted([KEY]),
        runner,
        max_sessions=max_sessions,
    )


async def _silent_listener() -> tuple[asyncio.Server, int, list[asyncio.StreamWriter]]:
    """Accepts callbacks and never answers: each holds a session until its auth timeout."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], held


def test_sessions_are_bounded_and_excess_requests_dropped_as_busy() -> None:
    async def scenario() -> tuple[int, int, int]:
        service = make_service(max_sessions=2)
        server, port, held = await _silent_listener()
        for seq in range(5):
            pkt = pyclient.build(Op.STATUS, "vm", KEY, port=port, seqno=seq)
            service.datagram_received(pkt, ("127.0.0.1", 5000))
        await asyncio.sleep(0.2)
        active, busy = service.active_sessions, service.stats.dropped["busy"]
        # Busy requests were not recorded: the client's retransmit is served once there is room.
        for task in list(service._tasks):
            task.cancel()
        await asyncio.sleep(0.05)
        retry = pyclient.build(Op.STATUS, "vm", KEY, port=port, seqno=4)
        service.datagram_received(retry, ("127.0.0.1", 5000))
        await asyncio.sleep(0.1)
        accepted_after = len(held)
        for task in list(service._tasks):
            task.cancel()
        server.close()
        return active, busy, accepted_after

    active, busy, accepted = asyncio.run(scenario())
    assert active == 2
    assert busy == 3
    assert accepted == 3  # two held sessions plus the served retransmit


def test_reject_path_counts_each_reason_without_spawning_sessions() -> None:
    async def scenario() -> FenceService:
        service = make_service(max_sessions=8)
        other = Key(b"not the key")
        service.datagram_received(b"\0" * 175, ("127.0.0.1", 1))
        service.datagram_received(b"\0" * 177, ("127.0.0.1", 1))
        service.datagram_received(pyclient.build(Op.OFF, "vm", other, port=9), ("127.0.0.1", 1))
        weak = pyclient.build(Op.OFF, "vm", KEY, hashtype=HashType.SHA1, port=9)
        service.datagram_received(weak, ("127.0.0.1", 1))
        unsigned = pyclient.build(Op.OFF, "vm", KEY, hashtype=HashType.NONE, port=9)
        service.datagram_received(unsigned, ("127.0.0.1", 1))
        nocb = pyclient.build(Op.OFF, "vm", KEY, address=None, port=0)
        service.datagram_received(nocb, ("127.0.0.1", 1))
        bad_op = bytearray(pyclient.build(Op.OFF, "vm", KEY, port=9))
        bad_op[0] = 9
        service.datagram_received(bytes(bad_op), ("127.0.0.1", 1))
        return service

    service = asyncio.run(scenario())
    assert service.active_sessions == 0
    assert dict(service.stats.dropped) == {
        "size": 2,
        "bad-signature": 1,
        "weak-hash": 2,
        "no-callback": 1,
        "op": 1,
    }
