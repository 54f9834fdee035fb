"""An admitted request's session: call back, authenticate, check quorum again, act, answer.

Rules:
1. Quorum is checked twice: before any connection (``xvmd.core.intake``) and here, after the
   handshake and just before acting, since quorum can be lost while a client answers the
   challenge. A power action that finds the host inquorate here is neither done nor answered.
2. The answer is what the backend proved (``xvmd.core.acting``); it is recorded, durably for a
   power action, before the result byte leaves, so whoever heard "done" can find the record.
3. Every session that authenticated ends in exactly one record and one log line; a session cut
   off by a stop while acting gets a record "unknown" instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from xvmd.core.accounting import DropAccount, Stats
from xvmd.core.acting import Admitted, Done, carry_out
from xvmd.core.executor import BackendRunner
from xvmd.core.intake import Intake
from xvmd.core.policy import Gate, quorum_gate
from xvmd.core.records import Recorder, RequestRecord, log_request
from xvmd.core.slots import Slot
from xvmd.net import tcp
from xvmd.protocol.drops import DropReason
from xvmd.protocol.session import ServerSession
from xvmd.protocol.wire import CHALLENGE_SIZE, FenceRequest, HashType, Result
from xvmd.quorum import QuorumStatus

if TYPE_CHECKING:  # the multi-host types load only where several hosts serve
    from xvmd.core.hostgroup import HostGroup

log = logging.getLogger("xvmd")

WRITE_TIMEOUT = 10.0
"""Seconds a client gets to read what it is sent (challenge, answer) before it is cut off."""


class Pipeline:
    """The steps every admitted request takes, whichever way it arrived."""

    def __init__(
        self,
        challenge: HashType,
        runner: BackendRunner,
        intake: Intake,
        drops: DropAccount,
        *,
        now: Callable[[], float],
        random_bytes: Callable[[int], bytes],
        quorum: Callable[[], QuorumStatus] | None,
    ) -> None:
        self.challenge = challenge
        self.runner = runner
        self.intake = intake
        self.drops = drops
        self._now = now
        self._random = random_bytes
        self._quorum = quorum  # None: --local, no quorum checks
        self.hosts: HostGroup | None = None  # multi-host: the group deciding who answers

    @property
    def stats(self) -> Stats:
        return self.drops.stats

    @property
    def records(self) -> Recorder:
        return self.drops.records

    def quorum_status(self) -> QuorumStatus | None:
        return self._quorum() if self._quorum else None

    def out_of_group(self) -> str | None:
        """Why this host takes no part in the group's answers right now (several hosts and not
        quorate: its view of where VMs run may be a lone partition's), or None."""
        status = self.quorum_status()
        if self.hosts is None or status is None or status.quorate:
            return None
        return f"this host is not quorate ({status.reason}): the quorate hosts answer"

    async def call_back(self, job: Admitted, slot: Slot[Admitted]) -> None:
        """The multicast path: connect back to the request's callback, or to the callback of
        a copy from another of the node's addresses when that one cannot be reached."""
        req = job.req
        if self.out_of_group() is not None:
            # Lost quorum between the claim and its round: not even a connect-back (the client
            # accepts only the first one).
            self.stats.drop(DropReason.INQUORATE)
            log.info("%s %s: not quorate any more, left to the quorate hosts", req.op.label,
                     req.shown_target)  # fmt: skip
            return
        candidate: FenceRequest | None = req
        while candidate is not None:
            assert candidate.callback is not None
            address, port = candidate.callback
            try:
                channel = await tcp.connect_back(address, port)
            except tcp.CallbackFailed as exc:
                line = self.intake.callback_failed(req, address, port, str(exc), self._now())
                if line is not None:
                    log.warning("%s", line)
                candidate = self.intake.history.next_alternate(req)
                continue
            self.intake.connected(req, job.ok, self._now())
            await self.serve(dataclasses.replace(job, req=candidate, who=address), channel, slot)
            return
        self.intake.all_callbacks_failed(req, self._now())
        self.stats.drop(DropReason.CALLBACK_FAILED)

    async def serve(self, job: Admitted, channel: tcp.Channel, slot: Slot[Admitted]) -> None:
        """From the challenge to the answer, on a connected channel."""
        session = await self._authenticate(job, channel)
        if session is None:
            return
        req = job.req
        deadline = self._now() + self.runner.budget_for(req.op)
        gate, why = quorum_gate(req.op, self.quorum_status())
        outside = self.out_of_group()
        if outside is not None:  # queries included
            gate, why = Gate.DROP, outside
        if gate is Gate.DROP:
            self._lost_quorum(job, channel, why)
            return
        if gate is Gate.FAIL:
            session.send_result(Result.FAIL)
            done = Done(Result.FAIL, why)
        else:
            with slot.acting_on(job):
                done = await carry_out(self.runner, job, session, deadline, self.hosts)
        elapsed = (self._now() - job.started) * 1000
        record = RequestRecord(
            job.who, req, done.result, done.detail, job.device, elapsed, done.domain
        )
        await self.records.answered(record)
        await channel.finish(session, WRITE_TIMEOUT)
        # Released only once the connection is closed: a client that stops reading holds its
        # place (for WRITE_TIMEOUT at most), so stalled readers never exceed the quota.
        slot.release()
        self.stats.answered(req.op.label, done.result.label, elapsed / 1000)
        log_request(record)

    async def _authenticate(self, job: Admitted, channel: tcp.Channel) -> ServerSession | None:
        """The challenge-response; None (after logging and counting) when it failed."""
        key = job.ok.session_key
        # Tagged, so that no daemon holding this key ever answers it back (reflection).
        nonce = self._random(CHALLENGE_SIZE // 2)
        challenge = key.tagged_challenge(nonce) if key is not None else nonce * 2
        session = ServerSession(auth=self.challenge, key=key, challenge=challenge, now=self._now())
        if await channel.authenticate(session):
            return session
        await channel.finish(session, WRITE_TIMEOUT)
        failure = session.failure or ""
        drop = self.intake.auth_failed(job.req, job.who, failure, session.reflected, self._now())
        self.drops.dropped(drop, job.req, job.who)
        return None

    def _lost_quorum(self, job: Admitted, channel: tcp.Channel, why: str) -> None:
        """Quorum was lost during the handshake: we may not act, and must not claim anything."""
        req = job.req
        channel.abort()
        self.stats.drop(DropReason.INQUORATE)
        log.warning(
            "%s %s from %s: no answer sent: %s", req.op.label, req.shown_target, job.who, why
        )
        self.records.refusal(RequestRecord(job.who, req, "dropped", why, job.device))

    async def record_unknown(self, job: Admitted, waited: float) -> None:
        """A session cut off by a stop while the hypervisor was acting: nobody can say what
        became of the request, so the record says so and the operator must check the domain."""
        req = job.req
        detail = (
            f"xvmd stopped after waiting {waited:g}s for the hypervisor; the outcome of "
            f"{req.op.label} is unknown (check the domain's state); no answer was sent"
        )
        ms = (self._now() - job.started) * 1000
        await self.records.answered(RequestRecord(job.who, req, "unknown", detail, job.device, ms))
        log.error(
            "%s %s from %s: result unknown: %s", req.op.label, req.shown_target, job.who, detail
        )
