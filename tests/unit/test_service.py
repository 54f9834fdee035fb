"""FenceService on loopback with a fake backend: the pipeline's bounds and drop accounting."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.support import pyclient
from tests.unit.fakes import until
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.executor import BackendRunner
from xvmd.core.limits import Limits
from xvmd.core.operations import Clock
from xvmd.core.policy import Policy
from xvmd.core.service import FenceService, Hashes
from xvmd.protocol.auth import Key, sign_request
from xvmd.protocol.wire import HashType, Op

KEY = Key(os.urandom(64))
VM = DomainInfo("vm", "00000000-0000-4000-8000-000000000001", DomainState.RUNNING)


def make_service(max_sessions: int) -> FenceService:
    runner = BackendRunner(FakeBackend([VM]), Clock(time.monotonic, time.sleep), workers=4)
    return FenceService(
        Hashes(HashType.SHA256, HashType.SHA256),
        Policy.unrestricted([KEY]),
        runner,
        limits=Limits(max_sessions=max_sessions),
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
        await until(lambda: len(held) == 2)
        active, busy = service.active_sessions, service.stats.dropped["busy"]
        # Busy requests were not recorded: the client's retransmit is served once there is room.
        await service.drain(0)  # cuts the two held sessions off
        retry = pyclient.build(Op.STATUS, "vm", KEY, port=port, seqno=4)
        service.datagram_received(retry, ("127.0.0.1", 5000))
        await until(lambda: len(held) == 3)
        accepted_after = len(held)
        await service.drain(0)
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
        bad_op[0] = 9  # unknown op, validly signed: the signature is checked first
        signed = sign_request(bytes(bad_op[:112]) + b"\0" * 64, HashType.SHA256, KEY)
        service.datagram_received(signed, ("127.0.0.1", 1))
        tampered = bytearray(pyclient.build(Op.OFF, "vm", KEY, port=9))
        tampered[0] = 9  # changed after signing: a bad signature
        service.datagram_received(bytes(tampered), ("127.0.0.1", 1))
        return service

    service = asyncio.run(scenario())
    assert service.active_sessions == 0
    assert dict(service.stats.dropped) == {
        "size": 2,
        "bad-signature": 2,
        "weak-hash": 2,
        "no-callback": 1,
        "op": 1,
    }


def test_a_request_in_flight_finishes_under_the_policy_it_started_with(tmp_path: Path) -> None:
    """Swap the policy while a request is mid-authentication: it keeps the old key and map."""
    import ccs

    conf = tmp_path / "cluster.conf"
    key_path = tmp_path / "host.key"
    key_path.write_bytes(os.urandom(256))
    key_path.chmod(0o600)

    def config(version: int, vm: str) -> ccs.Snapshot:
        conf.write_text(
            f'<cluster name="c" config_version="{version}"><clusternodes>'
            f'<clusternode name="n1" nodeid="1"><fence><method name="1">'
            f'<device name="xvm" port="{vm}"/></method></fence></clusternode></clusternodes>'
            f'<fencedevices><fencedevice name="xvm" agent="fence_xvm" key_file="{key_path}"/>'
            "</fencedevices></cluster>"
        )
        snap = ccs.load(str(conf)).snapshot
        assert snap is not None
        return snap

    old = Policy.from_snapshot(config(1, "vm"))
    new = Policy.from_snapshot(config(2, "other-vm"))
    key = old.keys[0]

    async def scenario() -> tuple[int | None, int | None]:
        service = make_service(max_sessions=4)
        service.policy = old
        go, called = asyncio.Event(), asyncio.Event()
        results: list[int | None] = []

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            called.set()
            await go.wait()  # the daemon is waiting for our challenge now
            c1 = os.urandom(64)
            writer.write(c1)
            r1 = await reader.readexactly(64)
            assert r1 == key.digest(HashType.SHA256, c1)
            c2 = await reader.readexactly(64)
            writer.write(key.digest(HashType.SHA256, c2))
            results.append((await reader.read(1) or b"\xff")[0])
            writer.close()

        server = await asyncio.start_server(client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        service.datagram_received(pyclient.build(Op.STATUS, "n1", key, port=port), ("127.0.0.1", 1))
        await called.wait()
        service.policy = new  # reload lands mid-request
        go.set()
        await service.idle()
        late = pyclient.build(Op.STATUS, "n1", key, port=port)
        service.datagram_received(late, ("127.0.0.1", 1))  # starts under the new policy
        await service.idle()
        server.close()
        return results[0], results[1]

    first, second = asyncio.run(scenario())
    assert first == 0  # n1 -> vm under the old map, and vm runs in the fake backend
    assert second == 2  # n1 -> other-vm under the new map: no such domain, so OFF
