"""This host's inventory for the group: what it serves and every domain of its hypervisor,
published whenever that may have changed.

Rules:
1. Publish on joining and on every membership view (a newcomer must hear everyone), on every
   hypervisor change (libvirt lifecycle events, or a poll every ``POLL_INTERVAL`` where there
   are none), and on every config reload.
2. Coalesced: changes that arrive while a publish is under way cause exactly one more, so a
   burst of events costs two inventories, not one per event.
3. The hypervisor is read in the worker pool, with a deadline; a failed read publishes
   nothing (the others keep the last inventory) and is logged once per failure streak.
4. Key fingerprints only (``Key.id``), never key material.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from xvmd.backend import BackendError, DomainState
from xvmd.core.executor import BackendRunner, OutOfTime
from xvmd.core.policy import Policy
from xvmd.hosts.messages import Departed, DeviceTag, DomainRecord, Inventory, ProofRecord
from xvmd.protocol.wire import HostRecord

log = logging.getLogger("xvmd.hosts")

POLL_INTERVAL = 2.0
"""Seconds between reads of the domain list where the hypervisor sends no events."""
READ_BUDGET = 10.0
"""Seconds a read of the domain list may take before this publish is given up."""


def devices_of(policy: Policy) -> tuple[DeviceTag, ...]:
    """The devices this host serves, by name and key fingerprint."""
    tags = []
    for key in policy.keys:
        scope = policy.scope_for(key)
        name = scope.device if scope is not None else "key"
        tags.append(DeviceTag(name, key.id.hex()))
    return tuple(sorted(set(tags), key=lambda t: (t.device, t.fingerprint)))


def records_of(hosts: Sequence[HostRecord]) -> tuple[DomainRecord, ...]:
    return tuple(
        sorted(
            (DomainRecord(h.name, h.uuid.lower(), DomainState.of(h.state)) for h in hosts),
            key=lambda r: (r.name, r.uuid),
        )
    )


class Publisher:
    """Builds and sends this host's inventory; ``changed`` asks for a new one."""

    def __init__(
        self,
        runner: BackendRunner,
        send: Callable[[Inventory], None],
        *,
        node: Callable[[], int | None],
        name: Callable[[], str],
        policy: Callable[[], Policy],
        departed: Callable[[], tuple[Departed, ...]],
        proven: Callable[[], tuple[ProofRecord, ...]] = tuple,
    ) -> None:
        self._runner = runner
        self._send = send
        self._node = node
        self._name = name
        self._policy = policy
        self._departed = departed
        self._proven = proven
        self._wanted = asyncio.Event()
        self.serial = 0
        self.published: Inventory | None = None
        self.failures = 0

    def changed(self) -> None:
        """Something may have changed: publish again soon (from the loop thread only)."""
        self._wanted.set()

    async def run(self, poll: float | None) -> None:
        """Publish whenever asked; with ``poll`` (no hypervisor events), also re-read the
        domain list every ``poll`` seconds and publish when it differs."""
        while True:
            if poll is None:
                await self._wanted.wait()
            else:
                try:
                    async with asyncio.timeout(poll):
                        await self._wanted.wait()
                except TimeoutError:
                    pass
            forced = self._wanted.is_set()
            self._wanted.clear()
            await self.publish(only_if_different=not forced)

    async def publish(self, only_if_different: bool = False) -> Inventory | None:
        node = self._node()
        if node is None:
            return None  # not in the group (yet): the next view asks again
        domains = await self._read()
        if domains is None:
            return None
        departed, proven = self._departed(), self._proven()
        last = self.published
        same = last is not None and (last.node, last.domains, last.departed, last.proven) == (
            node,
            domains,
            departed,
            proven,
        )
        if only_if_different and same:
            return None
        self.serial += 1
        devices = devices_of(self._policy())
        inv = Inventory(node, self._name(), self.serial, devices, domains, departed, proven)
        self.published = inv
        self._send(inv)
        return inv

    async def _read(self) -> tuple[DomainRecord, ...] | None:
        loop = asyncio.get_running_loop()
        try:
            hosts = await self._runner.hostlist(loop.time() + READ_BUDGET)
        except (OutOfTime, BackendError) as exc:
            self.failures += 1
            if self.failures == 1:
                log.error("cannot read the domain list for the group: %s", exc or "timed out")
            return None
        if self.failures:
            log.info("domain list readable again after %d failed reads", self.failures)
            self.failures = 0
        return records_of(hosts)
