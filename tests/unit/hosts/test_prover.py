"""The prover: a departed host's completed off or reboot in the host cluster's fencing history,
at or after it left, becomes a proof every member applies; anything else proves nothing."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from xvmd.backend import DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.executor import BackendRunner
from xvmd.core.hostgroup import HostGroup
from xvmd.core.operations import Clock
from xvmd.core.policy import Policy
from xvmd.daemon.pacemaker import PacemakerUnavailable
from xvmd.daemon.prover import CLOCK_SKEW, Prover
from xvmd.hosts.fencehistory import EventState, FencingEvent
from xvmd.hosts.messages import DomainRecord, Inventory, ProofKind

UUID = "00000000-0000-4000-8000-00000000000a"
LEFT = 1_000_000.0


class Loopback:
    """A group of one: what this host sends comes back to it, as CPG does."""

    def __init__(self, hosts: HostGroup) -> None:
        self.hosts = hosts
        self.sent = 0

    @property
    def local_nodeid(self) -> int | None:
        return 1

    def send(self, payload: bytes) -> bool:
        self.sent += 1
        asyncio.get_running_loop().call_soon(self.hosts.on_message, 1, payload)
        return True


def departed_host2(clock: list[float]) -> HostGroup:
    runner = BackendRunner(FakeBackend(), Clock(time.monotonic, time.sleep), workers=1)
    hosts = HostGroup(
        runner,
        policy=lambda: Policy.unrestricted([]),
        quorum=None,
        now=time.monotonic,
        wall=lambda: clock[0],
    )
    hosts.link = Loopback(hosts)
    hosts.connected = True
    hosts.table.membership([1, 2], LEFT - 100)
    running = (DomainRecord("vm-a", UUID, DomainState.RUNNING),)
    hosts.table.inventory(Inventory(2, "hv2", 1, (), running))
    clock[0] = LEFT
    hosts.table.membership([1], LEFT)
    return hosts


def event(
    action: str, completed: float | None, state: EventState = EventState.SUCCESS
) -> FencingEvent:
    return FencingEvent("hv2", action, state, completed, "node1", "node1", "stonith_admin.1")


@pytest.mark.parametrize(
    ("history", "proven"),
    [
        ([event("reboot", LEFT + 5)], True),
        ([event("off", LEFT - CLOCK_SKEW / 2)], True),  # within the clocks' allowance
        ([event("off", LEFT - CLOCK_SKEW - 60)], False),  # before it left: an earlier life
        ([event("on", LEFT + 5)], False),  # unfencing proves nothing
        ([event("off", LEFT + 5, EventState.FAILED)], False),
        ([event("off", None, EventState.PENDING)], False),
        ([], False),
    ],
    ids=["reboot", "skew", "before", "on", "failed", "pending", "none"],
)
def test_only_a_completed_off_or_reboot_since_it_left_proves_it_down(
    history: list[FencingEvent], proven: bool
) -> None:
    async def scenario() -> bool:
        hosts = departed_host2([0.0])
        asked: list[str] = []

        async def fencer(name: str) -> list[FencingEvent]:
            asked.append(name)
            return history

        await Prover(hosts, fencer).look()
        for _ in range(5):
            await asyncio.sleep(0)
        assert asked == ["hv2"]
        proof = hosts.table.proof(2)
        assert proof is None or proof.kind is ProofKind.FENCED
        hosts.runner.shutdown()
        return proof is not None

    assert asyncio.run(scenario()) is proven


def test_no_pacemaker_is_said_once_and_proves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> Prover:
        hosts = departed_host2([0.0])

        async def missing(name: str) -> list[FencingEvent]:
            raise PacemakerUnavailable("stonith_admin not found")

        prover = Prover(hosts, missing)
        for _ in range(3):
            await prover.look()
        assert hosts.table.proof(2) is None
        hosts.runner.shutdown()
        return prover

    with caplog.at_level(logging.WARNING):
        prover = asyncio.run(scenario())
    assert prover.unavailable == "stonith_admin not found"
    assert caplog.text.count("cannot read the host cluster's fencing history") == 1
    assert "xvmd confirm-host-down" in caplog.text
