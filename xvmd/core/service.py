"""The daemon's two doors: multicast datagrams and the ``fence_virt -T`` TCP listener.

Rules:
1. The reject path is cheap and silent per packet: size, one digest, parse, then a counter.
   What happens next without I/O (replays, quorum, requester, duplicates, quotas) is decided by
   ``xvmd.core.intake``; operators see drops in rate-limited lines and a periodic summary.
2. An admitted request holds a session slot (``xvmd.core.slots``) from admission to its end,
   and goes the same way whichever door it came through (``xvmd.core.pipeline``).
3. A reload swaps ``policy`` whole; each request keeps the policy it was admitted under.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xvmd.core.accounting import DropAccount, Stats
from xvmd.core.acting import Admitted
from xvmd.core.droplog import Drop
from xvmd.core.executor import BackendRunner
from xvmd.core.intake import Intake
from xvmd.core.limits import DEFAULT_LIMITS, Limits, Ticket
from xvmd.core.pipeline import Pipeline
from xvmd.core.policy import Policy, Refused
from xvmd.core.records import Recorder, Trail
from xvmd.core.slots import SessionSlots, Slot
from xvmd.net import tcp
from xvmd.protocol.auth import Rejected, check_datagram, verify_request
from xvmd.protocol.drops import DropReason
from xvmd.protocol.history import History
from xvmd.protocol.session import STREAM_REQUEST_TIMEOUT
from xvmd.protocol.wire import REQUEST_SIZE, HashType, MalformedRequest, parse_request
from xvmd.quorum import QuorumStatus

if TYPE_CHECKING:  # the multi-host types load only where several hosts serve
    from xvmd.core.hostgroup import HostGroup
    from xvmd.hosts.rounds import Round

log = logging.getLogger("xvmd")

__all__ = ["FenceService", "Hashes", "Stats"]


@dataclass(frozen=True, slots=True)
class Hashes:
    """The configured hash of the multicast request (-c) and of the TCP challenge (-C)."""

    request: HashType
    challenge: HashType


class FenceService:
    def __init__(
        self,
        hashes: Hashes,
        policy: Policy,
        runner: BackendRunner,
        *,
        limits: Limits = DEFAULT_LIMITS,
        now: Callable[[], float] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        quorum: Callable[[], QuorumStatus] | None = None,
        audit: Trail | None = None,
        hosts: HostGroup | None = None,
    ) -> None:
        self.hashes = hashes
        self._min_hash = int(hashes.request)  # a plain int: compared once per datagram
        self.policy = policy
        self.runner = runner
        self.intake = Intake(hashes.challenge, limits)
        self.drops = DropAccount(Stats(), Recorder(audit, quorum))
        self._now = now or asyncio.get_event_loop().time
        self.slots: SessionSlots[Admitted] = SessionSlots()
        self.pipeline = Pipeline(
            hashes.challenge,
            runner,
            self.intake,
            self.drops,
            now=self._now,
            random_bytes=random_bytes,
            quorum=quorum,
        )
        self.hosts: HostGroup | None = None  # several hosts: the group decides who answers
        if hosts is not None:
            self.use_hosts(hosts)

    def use_hosts(self, hosts: HostGroup) -> None:
        """From now on the group decides who answers each multicast request."""
        self.hosts = self.pipeline.hosts = hosts
        hosts.serve_unclaimed = self._serve_unclaimed

    @property
    def stats(self) -> Stats:
        return self.drops.stats

    @property
    def records(self) -> Recorder:
        return self.drops.records

    @property
    def history(self) -> History:
        return self.intake.history

    @property
    def recent(self) -> list[dict[str, Any]]:
        return list(self.records.recent)

    @property
    def max_sessions(self) -> int:
        return self.intake.sessions.total

    @property
    def active_sessions(self) -> int:
        """Places taken in the session and TCP-client quotas."""
        return self.intake.sessions.used + self.intake.streams.used

    @property
    def in_flight(self) -> int:
        """Sessions whose task has not ended yet (a place may already be given back)."""
        return self.slots.in_flight

    async def idle(self) -> None:
        """Return once no session is in flight."""
        await self.slots.idle()

    # -- datagrams ------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> None:
        admitted = self._admit(data, source[0])
        if admitted is None:
            return
        job, ticket = admitted
        if self.hosts is None:
            self.slots.spawn(ticket, functools.partial(self.pipeline.call_back, job))
        else:
            self._propose(self.hosts, job, ticket)

    def _admit(self, data: bytes, source: str) -> tuple[Admitted, Ticket] | None:
        """The reject path and intake: the admitted request and its session place, or None
        (dropped and counted)."""
        if len(data) != REQUEST_SIZE:
            self.stats.drop(DropReason.SIZE)
            return None
        policy = self.policy
        key, reason = check_datagram(data, self._min_hash, policy.keys)
        if reason is not None:
            self._rejected(reason, source)
            return None
        try:
            req = parse_request(data)
        except MalformedRequest as exc:
            self.stats.drop(exc.reason)
            log.debug("dropped datagram from %s: %s", source, exc)
            return None
        now = self._now()
        verdict = self.intake.datagram(req, key, policy, self.pipeline.quorum_status(), now)
        if isinstance(verdict, Drop):
            self.drops.dropped(verdict, req, req.address or source)
            return None
        assert req.callback is not None
        return Admitted.of(req, verdict, policy, req.callback[0], now), verdict.ticket

    # -- several hosts: the group decides who answers ----------------------------------------

    def _propose(self, hosts: HostGroup, job: Admitted, ticket: Ticket) -> None:
        """Claim the request for the group; it is served here only if the round says so."""
        outside = self.pipeline.out_of_group()
        if outside is not None:
            self._decline_locally(job, ticket, Drop(DropReason.INQUORATE, outside))
            return
        key = job.ok.scope_key
        if key is None:
            why = "unsigned request: several hosts cannot agree who answers it; sign requests"
            self._decline_locally(job, ticket, Drop(DropReason.NO_KEY, why))
            return
        domain, uuid_only = "", False
        if job.req.op.needs_domain:
            mapped = job.policy.map(key, job.req.domain)
            if not isinstance(mapped, Refused):
                domain, uuid_only = mapped.domain, mapped.uuid_only
        from xvmd.core.hostgroup import Waiting  # loaded already: ``hosts`` is one
        from xvmd.hosts.messages import Claim

        claim = Claim(hosts.me or 0, key.id.hex(), job.req.raw, domain, uuid_only)
        waiting = Waiting(
            job.req,
            ticket,
            start=functools.partial(self._start_round, job, ticket),
            drop=functools.partial(self._let_go, job, ticket),
        )
        hosts.propose(waiting, claim)

    def _decline_locally(self, job: Admitted, ticket: Ticket, drop: Drop) -> None:
        ticket.release()
        self.intake.history.forget(job.req)
        self.drops.dropped(drop, job.req, job.who)

    def _start_round(self, job: Admitted, ticket: Ticket, opened: Round) -> None:
        routed = dataclasses.replace(job, round=opened)
        self.slots.spawn(ticket, functools.partial(self._serve_round, routed))

    async def _serve_round(self, job: Admitted, slot: Slot[Admitted]) -> None:
        try:
            await self.pipeline.call_back(job, slot)
        finally:
            if self.hosts is not None and job.round is not None:
                self.hosts.finish(job.round)

    def _let_go(self, job: Admitted, ticket: Ticket) -> None:
        """Another host answers (or none can be asked): a later copy may be claimed again."""
        ticket.release()
        self.intake.history.forget(job.req)

    def _serve_unclaimed(self, opened: Round) -> None:
        """This host answers a round another host's claim opened, without a copy of its own."""
        admitted = self._admit(opened.claim.request, f"host {opened.claim.origin}")
        if admitted is None:
            if self.hosts is not None:
                self.hosts.finish(opened)
            return
        job, ticket = admitted
        self._start_round(job, ticket, opened)

    def _rejected(self, reason: DropReason, who: str) -> None:
        if reason is DropReason.FORGED:
            self.drops.dropped(self.intake.forged(who, self._now()), None, who)
            return
        self.stats.drop(reason)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dropped datagram from %s: %s", who, reason)

    def log_summaries(self) -> None:
        """Housekeeping: requests refused as a whole, and the counts kept out of the log."""
        now = self._now()
        for req, drop in self.intake.overdue(now):
            self.drops.report(drop, req, req.address or "?")
        for line in self.intake.summaries(now):
            log.warning("%s", line)

    # -- the TCP listener (fence_virt -T) ------------------------------------------------------

    async def stream_client(self, channel: tcp.Channel) -> None:
        peer = channel.peer[0]
        ticket = self.intake.open_stream(peer, self._now())
        if isinstance(ticket, Drop):
            self.drops.dropped(ticket, None, peer)
            channel.abort()
            return
        with self.slots.hold(ticket) as slot:
            job = await self._read_stream(channel, peer, ticket)
            if job is None:
                channel.abort()
                return
            await self.pipeline.serve(job, channel, slot)

    async def _read_stream(
        self, channel: tcp.Channel, peer: str, ticket: Ticket
    ) -> Admitted | None:
        """The request a TCP client sends first, verified and admitted; None: dropped."""
        started = self._now()
        policy = self.policy
        data = await channel.read_exact(REQUEST_SIZE, STREAM_REQUEST_TIMEOUT)
        if data is None:
            self.stats.drop(DropReason.STREAM_INCOMPLETE)
            return None
        try:
            req = parse_request(data)
            key = verify_request(req, self.hashes.request, policy.keys)
        except (MalformedRequest, Rejected) as exc:
            if exc.reason is DropReason.FORGED:
                self.drops.dropped(self.intake.forged(peer, self._now()), None, peer)
            else:
                self.stats.drop(exc.reason)
                log.info("dropped TCP request from %s: %s", peer, exc)
            return None
        status = self.pipeline.quorum_status()
        verdict = self.intake.stream(req, key, policy, status, self._now(), peer, ticket)
        if isinstance(verdict, Drop):
            self.drops.dropped(verdict, req, peer)
            return None
        return Admitted.of(req, verdict, policy, peer, started)

    # -- stopping -------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> int:
        """Wait for sessions in flight; returns how many were still running at the timeout.

        Those are then cut off. A request that was being carried out gets an audit record with
        the result "unknown": the hypervisor never said what became of it, so neither can we,
        and the operator must check the domain before trusting either answer."""

        async def unknown(job: Admitted) -> None:
            await self.pipeline.record_unknown(job, timeout)

        return await self.slots.drain(timeout, unknown)
