"""Sweeps: no answer says a VM is not running on the group's table alone (xvmd.core.sweeps).

Found by the multi-host bench: a VM started on another host a few milliseconds before a request
was not in the table yet (its libvirt event and the inventory were still on their way), and the
group answered ``off``. Here the stand-in for that moment is a host whose hypervisor has the VM
while its inventory has not been published.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.fakes import until
from tests.unit.hosts.test_multihost import (
    OFF,
    RUN,
    UUID,
    Bus,
    ask,
    group,
    make_host,
    policy_for,
    settle,
)
from xvmd.backend import DomainInfo
from xvmd.core.sweeps import Sweeps
from xvmd.hosts.messages import Seen, Swept
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import Op, Result


def test_a_vm_started_elsewhere_a_moment_ago_is_never_reported_off(
    shared: tuple[Path, Key],
) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        layout = {1: {"vm1": OFF}, 2: {}, 3: {"vm3": RUN}}  # vm1 defined, shut off, on host 1
        hosts = [make_host(bus, n, policy, vms) for n, vms in layout.items()]
        async with group(hosts, bus):
            reply, _ = await ask(hosts, Op.STATUS, "n1", key)
            assert reply.result == Result.OFF  # the sweep agrees: off everywhere
            # vm1 starts on host 2; its inventory has not reached the group yet.
            hosts[1].backend.add_domain(DomainInfo("vm1", UUID["vm1"], RUN))
            reply, connects = await ask(hosts, Op.STATUS, "n1", key)
            assert (reply.result, connects) == (Result.SUCCESS, 1)
            reply, connects = await ask(hosts, Op.OFF, "n1", key)
            assert (reply.result, connects) == (Result.FAIL, 1)  # never "already off"
            assert hosts[1].backend.state(UUID["vm1"]).state is RUN
            reply, _ = await ask(hosts, Op.REBOOT, "n1", key)
            assert reply.result == Result.FAIL
            await hosts[1].publisher.publish()  # the news arrives: now it can be fenced
            await settle(hosts)
            reply, _ = await ask(hosts, Op.OFF, "n1", key)
            assert reply.result == Result.SUCCESS
            assert hosts[1].backend.state(UUID["vm1"]).state is OFF

    asyncio.run(scenario())


def test_a_member_that_leaves_before_saying_makes_a_negative_answer_fail(
    shared: tuple[Path, Key],
) -> None:
    conf, key = shared

    async def scenario() -> None:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        layout = {1: {"vm1": OFF}, 2: {}}
        hosts = [make_host(bus, n, policy, vms) for n, vms in layout.items()]
        async with group(hosts, bus):
            silent = hosts[1].hosts
            silent.on_message = lambda *_: None  # type: ignore[method-assign]  # hears nothing

            async def leave_soon() -> None:
                await until(lambda: len(hosts[0].hosts.sweeps) > 0, timeout=5.0)  # asked
                del bus.members[2]
                bus.view()

            leaving = asyncio.create_task(leave_soon())
            reply, connects = await ask(hosts[:1], Op.STATUS, "n1", key)
            await leaving
            assert (reply.result, connects) == (Result.FAIL, 1)  # not OFF: host 2 may run it

    asyncio.run(scenario())


def test_the_bookkeeping_of_sweeps() -> None:
    async def scenario() -> None:
        sweeps = Sweeps()
        ident, done = sweeps.start(frozenset({1, 2, 3}))
        sweeps.answered(Swept(ident, 1, 1, Seen.INACTIVE, "shut off"))
        sweeps.answered(Swept(ident, 1, 9, Seen.ACTIVE, "running"))  # not asked: ignored
        sweeps.answered(Swept(ident, 1, 2, Seen.ACTIVE, "running"))
        assert not done.done() and sweeps.missing(ident) == [3]
        sweeps.answered(Swept(ident, 1, 3, Seen.UNKNOWN, "hypervisor error: gone"))
        result = await done
        assert result.active_on == (2,)
        assert result.problem == "host 3: hypervisor error: gone"

        ident, done = sweeps.start(frozenset({1, 2}))
        sweeps.answered(Swept(ident, 1, 1, Seen.INACTIVE, "not defined here"))
        sweeps.membership(frozenset({1}))
        assert (await done).problem == "host 2 left before saying whether it runs the VM"

        ident, done = sweeps.start(frozenset({1, 2}))
        for node in (1, 2):
            sweeps.answered(Swept(ident, 1, node, Seen.INACTIVE, "shut off"))
        assert (await done).active_on == () and (await done).problem == ""
        sweeps.end(ident)
        assert sweeps.missing(ident) == []

    asyncio.run(scenario())
