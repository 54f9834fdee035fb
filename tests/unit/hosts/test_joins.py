"""A host that joins while a round is in progress (xvmd.core.hostgroup, rule 3).

Found by the 600 s randomized run: host 2 restarted and joined while host 1 served a status
round; the guest's retransmit reached host 2, which knew nothing of the round and, with the
others' inventories not in yet, decided it alone with itself as the responder. The request got
two connect-backs. A host does not connect back until it has heard every member's inventory
since the join; it still ends the rounds it was given.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.support import pyclient
from tests.unit.hosts.test_multihost import RUN, Bus, make_host, policy_for, settle
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import HashType, Op, Result


async def pump() -> None:
    """Let the in-process bus deliver (call_soon) without waiting for sessions to end."""
    for _ in range(50):
        await asyncio.sleep(0)


def accept(listener: socket.socket, wait: float) -> socket.socket | None:
    listener.settimeout(wait)
    try:
        return listener.accept()[0]
    except TimeoutError:
        return None


def test_a_host_that_joins_mid_round_does_not_answer_it_too(shared: tuple[Path, Key]) -> None:
    conf, key = shared

    async def scenario() -> tuple[Result | None, bool, bool]:
        bus = Bus()
        policy = policy_for(conf, ["xvm"])
        h1 = make_host(bus, 1, policy, {"vm1": RUN})
        h3 = make_host(bus, 3, policy, {"vm3": RUN})
        bus.view()
        for h in (h1, h3):
            await h.publisher.publish()
        await settle([h1, h3])
        listener = pyclient.callback_listener()
        packet = pyclient.build(Op.STATUS, "n1", key, port=listener.getsockname()[1])
        h1.service.datagram_received(packet, ("127.0.0.1", 5000))  # host 1's round begins
        first = await asyncio.to_thread(accept, listener, 5.0)  # and is held open here
        assert first is not None
        h2 = make_host(bus, 2, policy, {})  # joins now; the others have not republished
        bus.view()
        await h2.publisher.publish()
        await pump()
        assert h2.hosts.catching_up
        h2.service.datagram_received(packet, ("127.0.0.1", 5000))  # the guest's retransmit
        await pump()
        second = await asyncio.to_thread(accept, listener, 0.5)
        answered = await asyncio.to_thread(
            pyclient.exchange, first, key, HashType.SHA256, Op.STATUS
        )
        for h in (h1, h3):  # the inventories reach host 2: it takes part again
            await h.publisher.publish()
        await settle([h1, h2, h3])
        caught_up = not h2.hosts.catching_up
        for h in (h1, h2, h3):
            await h.service.drain(1.0)
            await h.hosts.stop()
            h.service.runner.shutdown()
        listener.close()
        extra = second is not None
        if second is not None:
            second.close()
        return answered.result, extra, caught_up

    result, extra, caught_up = asyncio.run(scenario())
    assert result == Result.SUCCESS  # host 1's answer: vm1 runs there
    assert not extra  # host 2 did not connect back as well
    assert caught_up  # and takes part again once the inventories are in
