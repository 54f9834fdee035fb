"""Looking for the host cluster's proof that a departed host is down: a completed off or
reboot of it in Pacemaker's fencing history, recorded at or after the time it left.

Rules:
1. Only while it matters: every ``POLL_INTERVAL`` seconds, for each host that left with VMs last
   seen active there and no proof yet (``Table.unproven``).
2. The proof found is multicast to the group (``Proof``), so every member applies it at the
   same point of the agreed order; finding it on one host is enough.
3. ``since`` is when this host saw the departed host leave, less ``CLOCK_SKEW`` for the hosts'
   clocks, but never before the host last joined: a fencing of an earlier life of the host
   proves nothing about this one.
4. No Pacemaker (not installed, not running) is not an error: the operator's confirmation is
   the other way; it is logged once per streak, with that advice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from xvmd.core.hostgroup import HostGroup
from xvmd.daemon.pacemaker import PacemakerUnavailable, fencing_history
from xvmd.hosts.fencehistory import FencingEvent, proof_of_down
from xvmd.hosts.messages import Proof, ProofKind, ProofRecord

log = logging.getLogger("xvmd.hosts")

POLL_INTERVAL = 2.0
CLOCK_SKEW = 2.0
"""Seconds a fencing may be recorded before this host saw the leave (clocks differ a little)."""

History = Callable[[str], Awaitable[list[FencingEvent]]]


class Prover:
    def __init__(self, hosts: HostGroup, history: History = fencing_history) -> None:
        self.hosts = hosts
        self._history = history
        self.unavailable: str | None = None  # why the fencing history cannot be read

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self.look()

    async def look(self) -> None:
        table = self.hosts.table
        for node in table.unproven():
            left = table.left_at(node)
            me = self.hosts.me
            if left is None or me is None:
                continue
            since = max(left - CLOCK_SKEW, table.joined_at(node) or 0.0)
            name = table.name_of(node)
            event = await self._find(name, since)
            if event is not None and table.proof(node) is None:
                record = ProofRecord(node, ProofKind.FENCED, event.describe())
                self.hosts.send(Proof(me, record))

    async def _find(self, name: str, since: float) -> FencingEvent | None:
        try:
            events = await self._history(name)
        except (PacemakerUnavailable, ValueError) as exc:
            if self.unavailable is None:
                log.warning(
                    "cannot read the host cluster's fencing history (%s): the VMs of a host "
                    "that left wait for its fencing there, or for xvmd confirm-host-down",
                    exc,
                )
            self.unavailable = str(exc)
            return None
        if self.unavailable is not None:
            log.info("the host cluster's fencing history is readable again")
            self.unavailable = None
        return proof_of_down(events, name, since)
