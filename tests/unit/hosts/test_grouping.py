"""The daemon's host group (GroupRuntime) over an in-memory corosync: hosts publish what they
run, and an operator's confirmation that a departed host is down spreads to every member, is
refused for a host that is up or unknown, and is void once the host is back."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.unit.fakes import until
from tests.unit.hosts.fake_cpg import FakeCpgCluster
from xvmd.backend import DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.domcache import DomainCache
from xvmd.core.executor import BackendRunner
from xvmd.core.operations import Clock
from xvmd.core.policy import Policy
from xvmd.daemon.grouping import GroupRuntime
from xvmd.hosts.group import CpgGroup
from xvmd.hosts.messages import ProofKind
from xvmd.protocol.auth import Key
from xvmd.quorum import Member, QuorumStatus

UUID = "00000000-0000-4000-8000-00000000000a"
KEY = Key(b"k" * 32)


def quorum(node_names: dict[int, str]) -> Callable[[], QuorumStatus]:
    members = tuple(Member(n, name) for n, name in node_names.items())
    status = QuorumStatus(True, True, "quorate", True, members=members)
    return lambda: status


def runtime(
    cluster: FakeCpgCluster, node: int, domains: list[DomainInfo], **kw: object
) -> GroupRuntime:
    lib = cluster.library(node)
    runner = BackendRunner(FakeBackend(domains), Clock(time.monotonic, time.sleep), workers=2)
    return GroupRuntime(
        "guests",
        runner,
        DomainCache(runner),
        policy=lambda: Policy.unrestricted([KEY]),
        quorum=quorum({1: "hv1", 2: "hv2", 3: "hv3"}),
        make_group=functools.partial(CpgGroup, library=lambda: lib),
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(*runtimes: GroupRuntime) -> AsyncIterator[None]:
    for r in runtimes:
        await r.start()
    try:
        yield
    finally:
        for r in runtimes:
            await r.stop()
            r.runner.shutdown()


def test_a_departed_host_is_confirmed_down_on_every_member(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = FakeCpgCluster()
        vm = DomainInfo("vm-a", UUID, DomainState.RUNNING)
        r1, r2, r3 = (runtime(cluster, n, [vm] if n == 2 else []) for n in (1, 2, 3))
        async with running(r1, r2, r3):
            await until(lambda: len(r1.hosts.table.inventories()) == 3)
            refused = await r1.confirm_down("hv2", "root")
            assert not refused["ok"] and "is a member of the group" in refused["error"]
            cluster.kill(2)
            await until(lambda: r1.hosts.table.members == (1, 3))
            unknown = await r1.confirm_down("hv9", "root")
            assert not unknown["ok"] and "hv2" in unknown["error"]  # the hosts it may mean
            ok = await r1.confirm_down("hv2", "root")
            assert ok["ok"] and ok["node"] == 2 and "confirmed down by root on hv1" in ok["detail"]
            await until(lambda: r3.hosts.table.proof(2) is not None)  # spread to every member
            proof = r3.hosts.table.proof(2)
            assert proof is not None and proof.kind is ProofKind.OPERATOR
            assert r1.status()["proofs"][0]["name"] == "hv2"
            cluster.restart(2)
            await until(lambda: r1.hosts.table.members == (1, 2, 3), timeout=5)
            assert r1.hosts.table.proof(2) is None  # void: it came back
        cluster.close()

    asyncio.run(scenario())


def test_placements_are_kept_across_a_restart(tmp_path: Path) -> None:
    state = str(tmp_path / "placements.json")

    async def scenario() -> tuple[int, ...]:
        cluster = FakeCpgCluster()
        vm = DomainInfo("vm-a", UUID, DomainState.RUNNING)
        r1 = runtime(cluster, 1, [], state=state)
        r2 = runtime(cluster, 2, [vm])
        async with running(r1, r2):
            await until(lambda: len(r1.hosts.table.inventories()) == 2)
            cluster.kill(2)
            await until(lambda: r1.hosts.table.members == (1,))
        again = runtime(FakeCpgCluster(), 1, [], state=state)  # the whole host cluster restarted
        async with running(again):
            await until(lambda: again.hosts.table.members == (1,))
            return again.hosts.table.where("vm-a").departed

    assert asyncio.run(scenario()) == (2,)
