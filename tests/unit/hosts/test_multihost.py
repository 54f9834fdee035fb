"""Several hosts in one process: each a FenceService with its own fake hypervisor, joined by an
in-memory group that delivers every message to every member in one order (what CPG promises).
The client is the Python fence_xvm on loopback; every host gets each datagram, as on a bridge.

What it proves: exactly one host connects back, the right one, and its answer is true; a
per-host key reaches a VM on another host through a forward; list is the union; a VM known
nowhere is never reported fenced; a forward to a host that left fails within the budget.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import ccs
from tests.support import pyclient
from tests.unit.fakes import QUORATE, until
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.executor import BackendRunner
from xvmd.core.hostgroup import HostGroup
from xvmd.core.inventory import Publisher
from xvmd.core.operations import Clock
from xvmd.core.policy import Policy
from xvmd.core.service import FenceService, Hashes
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import HashType, Op, Result
from xvmd.quorum import QuorumStatus

UUID = {f"vm{i}": f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 5)}
RUN, OFF = DomainState.RUNNING, DomainState.SHUTOFF


@dataclass(frozen=True)
class View:
    connected: bool
    members: tuple[int, ...]


class Bus:
    """CPG in one process: one queue, every message to every member in the same order."""

    def __init__(self) -> None:
        self.members: dict[int, HostGroup] = {}
        self.sent: list[tuple[int, bytes]] = []

    def link(self, node: int) -> Endpoint:
        return Endpoint(self, node)

    def view(self) -> None:
        view = View(True, tuple(sorted(self.members)))
        for hosts in list(self.members.values()):
            hosts.on_membership(view)

    def send(self, node: int, payload: bytes) -> bool:
        if node not in self.members:
            return False
        self.sent.append((node, payload))
        asyncio.get_running_loop().call_soon(self._deliver, node, payload)
        return True

    def _deliver(self, node: int, payload: bytes) -> None:
        for hosts in list(self.members.values()):
            hosts.on_message(node, payload)


@dataclass
class Endpoint:
    bus: Bus
    node: int

    @property
    def local_nodeid(self) -> int | None:
        return self.node

    def send(self, payload: bytes) -> bool:
        return self.bus.send(self.node, payload)


@dataclass
class Host:
    node: int
    backend: FakeBackend
    service: FenceService
    hosts: HostGroup
    publisher: Publisher


def cluster_conf(tmp_path: Path, keys: dict[str, bytes], nodes: dict[str, tuple[str, str]]) -> Path:
    """``keys``: device -> key bytes; ``nodes``: node -> (device, VM)."""
    devices = ""
    for device, data in keys.items():
        path = tmp_path / f"{device}.key"
        path.write_bytes(data)
        path.chmod(0o600)
        devices += f'<fencedevice name="{device}" agent="fence_xvm" key_file="{path}"/>'
    members = "".join(
        f'<clusternode name="{node}" nodeid="{i}"><fence><method name="1">'
        f'<device name="{device}" port="{vm}"/></method></fence></clusternode>'
        for i, (node, (device, vm)) in enumerate(nodes.items(), start=1)
    )
    conf = tmp_path / "cluster.conf"
    conf.write_text(
        f'<cluster name="guests" config_version="1"><clusternodes>{members}</clusternodes>'
        f"<fencedevices>{devices}</fencedevices></cluster>"
    )
    return conf


def policy_for(conf: Path, devices: list[str]) -> Policy:
    snap = ccs.load(str(conf), devices).snapshot
    assert snap is not None
    return Policy.from_snapshot(snap)


def make_host(
    bus: Bus,
    node: int,
    policy: Policy,
    domains: dict[str, DomainState],
    quorum: Callable[[], QuorumStatus] = lambda: QUORATE,
) -> Host:
    loop = asyncio.get_running_loop()
    backend = FakeBackend([DomainInfo(n, UUID[n], s) for n, s in domains.items()])
    runner = BackendRunner(backend, Clock(time.monotonic, time.sleep), workers=4)
    hosts = HostGroup(runner, policy=lambda: policy, quorum=quorum, now=loop.time)
    hosts.link = bus.link(node)
    service = FenceService(
        Hashes(HashType.SHA256, HashType.SHA256),
        policy,
        runner,
        now=loop.time,
        quorum=quorum,
        hosts=hosts,
    )
    publisher = Publisher(
        runner,
        hosts.send,
        node=lambda: node,
        name=lambda: f"host{node}",
        policy=lambda: service.policy,
        departed=hosts.table.departed,
    )
    bus.members[node] = hosts
    return Host(node, backend, service, hosts, publisher)


@asynccontextmanager
async def group(hosts: list[Host], bus: Bus) -> AsyncIterator[list[Host]]:
    bus.view()
    for h in hosts:
        await h.publisher.publish()
    await settle(hosts)
    try:
        yield hosts
    finally:
        for h in hosts:
            await h.service.drain(1.0)
            await h.hosts.stop()
            h.service.runner.shutdown()


async def settle(hosts: list[Host]) -> None:
    for _ in range(20):  # delivery is call_soon: a few loop turns
        await asyncio.sleep(0)
    for h in hosts:
        await h.service.idle()


async def ask(
    hosts: list[Host], op: Op, target: str, key: Key, *, seen_by: list[int] | None = None
) -> tuple[pyclient.Reply, int]:
    """Send one request to every host (or those in ``seen_by``); the reply, and how many
    hosts connected back."""
    listener = pyclient.callback_listener()
    port = listener.getsockname()[1]
    packet = pyclient.build(op, target, key, port=port)
    for h in hosts:
        if seen_by is None or h.node in seen_by:
            h.service.datagram_received(packet, ("127.0.0.1", 5000))
    reply = await asyncio.to_thread(
        pyclient.serve_callback, listener, key, auth=HashType.SHA256, op=op, wait=5.0
    )
    await settle(hosts)
    extra = await asyncio.to_thread(_more_connections, listener)
    listener.close()
    return reply, 1 + extra if reply.connected else extra


def _more_connections(listener: socket.socket) -> int:
    listener.settimeout(0.2)
    n = 0
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return n
        conn.close()
        n += 1


def run(scenario: Callable[[], object]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


# -- shared key: every host listens, only the owner answers -------------------------------------


def test_shared_key_status_and_off_are_answered_by_the_owner_only(
    shared: tuple[Path, Key],
) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        layout = {1: {"vm2": RUN}, 2: {"vm1": RUN}, 3: {"vm3": OFF}}
        hosts = [make_host(bus, n, policy, vms) for n, vms in layout.items()]
        async with group(hosts, bus):
            for _ in range(8):  # fence_virtd: right half the time
                reply, connects = await ask(hosts, Op.STATUS, "n1", key)
                assert (reply.result, connects) == (Result.SUCCESS, 1)
            reply, connects = await ask(hosts, Op.OFF, "n1", key)
            assert (reply.result, connects) == (Result.SUCCESS, 1)
            assert hosts[1].backend.state(UUID["vm1"]).state is OFF  # really off, on its host
            reply, _ = await ask(hosts, Op.STATUS, "n1", key)
            assert reply.result == Result.OFF
            reply, connects = await ask(hosts, Op.STATUS, "n3", key)
            assert (reply.result, connects) == (Result.OFF, 1)

    run(scenario)


def test_list_is_the_union_of_every_host(shared: tuple[Path, Key]) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        layout = {1: {"vm2": RUN}, 2: {"vm1": RUN, "vm3": OFF}, 3: {"vm3": RUN}}
        hosts = [make_host(bus, n, policy, vms) for n, vms in layout.items()]
        async with group(hosts, bus):
            reply, connects = await ask(hosts, Op.HOSTLIST, "", key)
            assert connects == 1
            got = {(r.name, r.state) for r in reply.records}
            assert got == {("vm1", int(RUN)), ("vm2", int(RUN)), ("vm3", int(RUN))}

    run(scenario)


def test_a_vm_known_nowhere_is_never_reported_fenced(shared: tuple[Path, Key]) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        hosts = [make_host(bus, n, policy, {}) for n in (1, 2)]
        async with group(hosts, bus):
            for op in (Op.OFF, Op.REBOOT):
                reply, connects = await ask(hosts, op, "n1", key)
                assert (reply.result, connects) == (Result.FAIL, 1)
            reply, _ = await ask(hosts, Op.STATUS, "n1", key)
            assert reply.result == Result.OFF

    run(scenario)


def test_the_owner_answers_even_when_only_another_host_received_the_request(
    shared: tuple[Path, Key],
) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        hosts = [make_host(bus, n, policy, vms) for n, vms in {1: {}, 2: {"vm1": RUN}}.items()]
        async with group(hosts, bus):
            reply, connects = await ask(hosts, Op.OFF, "n1", key, seen_by=[1])
            assert (reply.result, connects) == (Result.SUCCESS, 1)
            assert hosts[1].backend.state(UUID["vm1"]).state is OFF

    run(scenario)


# -- per-host keys: the device's host forwards to where the VM runs now -------------------------


def test_per_host_keys_reach_a_migrated_vm_through_a_forward(tmp_path: Path) -> None:
    ka, kb = os.urandom(64), os.urandom(64)
    nodes = {"n1": ("xvm-a", "vm1"), "n2": ("xvm-b", "vm2")}
    conf = cluster_conf(tmp_path, {"xvm-a": ka, "xvm-b": kb}, nodes)

    async def scenario() -> None:
        bus = Bus()
        a = make_host(bus, 1, policy_for(conf, ["xvm-a"]), {"vm2": RUN})
        # vm1 migrated from host a to host b: its node still points at a's device
        b = make_host(bus, 2, policy_for(conf, ["xvm-b"]), {"vm1": RUN})
        async with group([a, b], bus) as hosts:
            reply, connects = await ask(hosts, Op.STATUS, "n1", Key(ka))
            assert (reply.result, connects) == (Result.SUCCESS, 1)
            reply, connects = await ask(hosts, Op.OFF, "n1", Key(ka))
            assert (reply.result, connects) == (Result.SUCCESS, 1)
            assert b.backend.state(UUID["vm1"]).state is OFF

    run(scenario)


def test_a_forward_to_a_host_that_leaves_fails_within_the_budget(tmp_path: Path) -> None:
    ka, kb = os.urandom(64), os.urandom(64)
    nodes = {"n1": ("xvm-a", "vm1"), "n2": ("xvm-b", "vm2")}
    conf = cluster_conf(tmp_path, {"xvm-a": ka, "xvm-b": kb}, nodes)

    async def scenario() -> None:
        bus = Bus()
        a = make_host(bus, 1, policy_for(conf, ["xvm-a"]), {})
        b = make_host(bus, 2, policy_for(conf, ["xvm-b"]), {"vm1": RUN})
        b.backend.delay["destroy"] = 3.0  # the hypervisor on b is slow
        async with group([a, b], bus) as hosts:
            task = asyncio.create_task(ask(hosts, Op.OFF, "n1", Key(ka)))
            await until(lambda: any(c[0] == "destroy" for c in b.backend.calls), 5.0)
            del bus.members[2]  # b dies mid-operation
            bus.view()
            reply, connects = await asyncio.wait_for(task, 10)
            assert (reply.result, connects) == (Result.FAIL, 1)
            assert "host 2" in a.service.recent[-1]["detail"]

    run(scenario)


def test_off_mid_migration_leaves_the_vm_off_on_every_host(shared: tuple[Path, Key]) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        layout = {1: {}, 2: {"vm1": DomainState.PAUSED}, 3: {"vm1": RUN}}
        hosts = [make_host(bus, n, policy, vms) for n, vms in layout.items()]
        async with group(hosts, bus):
            reply, connects = await ask(hosts, Op.OFF, "n1", key)
            assert (reply.result, connects) == (Result.SUCCESS, 1)
            assert [h.backend.state(UUID["vm1"]).state for h in hosts[1:]] == [OFF, OFF]

    run(scenario)


def test_a_stale_shut_off_copy_does_not_answer_for_the_running_one(
    shared: tuple[Path, Key],
) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        layout = {1: {"vm1": OFF}, 2: {"vm1": RUN}}  # migrated from 1 to 2, still defined on 1
        hosts = [make_host(bus, n, policy, vms) for n, vms in layout.items()]
        async with group(hosts, bus):
            for _ in range(4):
                reply, connects = await ask(hosts, Op.STATUS, "n1", key)
                assert (reply.result, connects) == (Result.SUCCESS, 1)
            reply, _ = await ask(hosts, Op.OFF, "n1", key)
            assert reply.result == Result.SUCCESS
            assert hosts[1].backend.state(UUID["vm1"]).state is OFF

    run(scenario)


def test_bad_and_spoofed_messages_are_dropped_and_counted(shared: tuple[Path, Key]) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        hosts = [make_host(bus, n, policy, vms) for n, vms in {1: {"vm1": RUN}, 2: {}}.items()]
        async with group(hosts, bus):
            assert hosts[0].publisher.published is not None
            spoofed = bus.sent[0][1]  # host 1's inventory, now "sent" by host 2
            for payload in (b"{", b'{"v":1,"kind":"gossip"}', spoofed):
                bus.send(2, payload)
            await settle(hosts)
            assert sum(hosts[0].hosts.bad.values()) == 3
            reply, connects = await ask(hosts, Op.STATUS, "n1", key)
            assert (reply.result, connects) == (Result.SUCCESS, 1)  # the table is intact

    run(scenario)


def test_a_host_that_loses_quorum_after_admitting_a_query_does_not_answer_it(
    shared: tuple[Path, Key],
) -> None:
    """Found by the randomized run: a host cut off just after admitting a status decided it
    alone in its one-host view and answered OFF from its own hypervisor."""
    conf, key = shared
    lost = QuorumStatus(True, False, "this partition is not quorate")

    async def scenario() -> int:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        quorate = [True]
        quorum = lambda: QUORATE if quorate[0] else lost  # noqa: E731
        host = make_host(bus, 1, policy, {"vm1": OFF}, quorum)  # a stale copy of vm1
        async with group([host], bus):
            listener = pyclient.callback_listener()
            packet = pyclient.build(Op.STATUS, "n1", key, port=listener.getsockname()[1])
            host.service.datagram_received(packet, ("127.0.0.1", 5000))  # admitted, claimed
            quorate[0] = False  # cut off before its round is decided
            await settle([host])
            connects = await asyncio.to_thread(_more_connections, listener)
            listener.close()
            return connects

    assert asyncio.run(scenario()) == 0
