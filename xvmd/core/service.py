"""One request's way through the daemon: verify, admit, call back, authenticate, act, answer.

Rules:
1. The reject path is cheap and silent per packet: size, one digest, parse, then a counter.
   What happens next without I/O (replays, quorum, requester, duplicates, quotas) is decided by
   ``xvmd.core.intake``; operators see drops in rate-limited lines and a periodic summary.
2. Power actions are answered only after authentication, and the answer is what the backend
   proved (see ``xvmd.core.operations``).
3. Every request that reaches the TCP phase ends in exactly one log line: requester, op,
   target, result, milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xvmd.backend import BackendError
from xvmd.core.executor import BackendRunner, OutOfTime
from xvmd.core.intake import KEPT, Drop, Intake, Proceed
from xvmd.core.limits import DEFAULT_LIMITS, Limits
from xvmd.core.policy import Gate, Policy, Refused, quorum_gate
from xvmd.core.records import Recorder, log_request
from xvmd.daemon.audit import AuditLog
from xvmd.net import tcp
from xvmd.protocol.auth import Key, Rejected, check_datagram, verify_request
from xvmd.protocol.history import History
from xvmd.protocol.session import STREAM_REQUEST_TIMEOUT, ServerSession
from xvmd.protocol.wire import (
    CHALLENGE_SIZE,
    REQUEST_SIZE,
    FenceRequest,
    HashType,
    MalformedRequest,
    Op,
    Result,
    parse_request,
)
from xvmd.quorum import QuorumStatus

log = logging.getLogger("xvmd")

WRITE_TIMEOUT = 10.0


@dataclass
class Stats:
    dropped: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


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
        audit: AuditLog | None = None,
    ) -> None:
        self.hashes = hashes
        self._min_hash = int(hashes.request)  # a plain int: compared once per datagram
        # Swapped whole on reload; each request keeps the policy it started with.
        self.policy = policy
        self.runner = runner
        self.intake = Intake(hashes.challenge, limits)
        self.stats = Stats()
        self._now = now or asyncio.get_event_loop().time
        self._random = random_bytes
        self._tasks: set[asyncio.Task[None]] = set()
        # Sessions between "authenticated" and "answered": what a stop would leave unknown.
        self._acting: dict[asyncio.Task[Any], _Acting] = {}
        self._quorum = quorum  # None: --local, no quorum checks
        self.records = Recorder(audit, quorum)

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
        return self.intake.sessions.used + self.intake.streams.used

    def _status(self) -> QuorumStatus | None:
        return self._quorum() if self._quorum else None

    # -- datagrams ------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> None:
        if len(data) != REQUEST_SIZE:
            self.stats.drop("size")
            return
        policy = self.policy
        key, reason = check_datagram(data, self._min_hash, policy.keys)
        if reason is not None:
            if reason == "forged":
                self._dropped(self.intake.forged(source[0], self._now()), None, source[0])
                return
            self.stats.dropped[reason] += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("dropped datagram from %s: %s", source[0], reason)
            return
        try:
            req = parse_request(data)
        except MalformedRequest as exc:
            self.stats.drop(exc.reason)
            log.debug("dropped datagram from %s: %s", source[0], exc)
            return
        verdict = self.intake.datagram(req, key, policy, self._status(), self._now())
        if isinstance(verdict, Drop):
            self._dropped(verdict, req, req.address or source[0])
            return
        task = asyncio.create_task(self._serve_datagram(req, verdict, policy))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dropped(self, drop: Drop, req: FenceRequest | None, who: str) -> None:
        if drop is KEPT:
            log.debug("copy of a pending request from %s kept as an alternate callback", who)
            return
        self.stats.drop(drop.reason)
        self._report(drop, req, who)

    def _report(self, drop: Drop, req: FenceRequest | None, who: str) -> None:
        if drop.message is not None:
            log.log(drop.level, "%s", drop.message)
        if drop.record and req is not None:
            self.records.refusal(who, req, drop.result, drop.detail)

    def log_summaries(self) -> None:
        """Housekeeping: requests refused as a whole, and the counts kept out of the log."""
        now = self._now()
        for req, drop in self.intake.overdue(now):
            self._report(drop, req, req.address or "?")
        for line in self.intake.summaries(now):
            log.warning("%s", line)

    async def _serve_datagram(self, req: FenceRequest, ok: Proceed, policy: Policy) -> None:
        started = self._now()
        candidate: FenceRequest | None = req
        try:
            while candidate is not None:
                assert candidate.callback is not None
                address, port = candidate.callback
                try:
                    channel = await tcp.connect_back(address, port)
                except tcp.CallbackFailed as exc:
                    line = self.intake.callback_failed(req, address, port, str(exc), self._now())
                    if line is not None:
                        log.warning("%s", line)
                    candidate = self.history.next_alternate(req)
                    continue
                self.intake.connected(req, ok, self._now())
                await self._serve_session(candidate, ok, policy, channel, started, address)
                return
            self.intake.all_callbacks_failed(req, self._now())
            self.stats.drop("callback-failed")
        finally:
            ok.ticket.release()

    # -- the TCP listener (fence_virt -T) ------------------------------------------------------

    async def stream_client(self, channel: tcp.Channel) -> None:
        peer = channel.peer[0]
        ticket = self.intake.open_stream(peer, self._now())
        if isinstance(ticket, Drop):
            self._dropped(ticket, None, peer)
            channel.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            started = self._now()
            policy = self.policy
            data = await channel.read_exact(REQUEST_SIZE, STREAM_REQUEST_TIMEOUT)
            if data is None:
                self.stats.drop("stream-incomplete")
                channel.abort()
                return
            try:
                req = parse_request(data)
                key = verify_request(req, self.hashes.request, policy.keys)
            except (MalformedRequest, Rejected) as exc:
                if exc.reason == "forged":
                    self._dropped(self.intake.forged(peer, self._now()), None, peer)
                else:
                    self.stats.drop(exc.reason)
                    log.info("dropped TCP request from %s: %s", peer, exc)
                channel.abort()
                return
            now = self._now()
            verdict = self.intake.stream(req, key, policy, self._status(), now, peer, ticket)
            if isinstance(verdict, Drop):
                self._dropped(verdict, req, peer)
                channel.abort()
                return
            await self._serve_session(req, verdict, policy, channel, started, peer)
        finally:
            ticket.release()
            self._tasks.discard(task)

    # -- common ---------------------------------------------------------------------------------

    async def _authenticate(
        self, req: FenceRequest, ok: Proceed, channel: tcp.Channel, who: str
    ) -> ServerSession | None:
        """The challenge-response; None (after logging and counting) when it failed."""
        key = ok.session_key
        # Tagged, so that no daemon holding this key ever answers it back (reflection).
        nonce = self._random(CHALLENGE_SIZE // 2)
        challenge = key.tagged_challenge(nonce) if key is not None else nonce * 2
        session = ServerSession(
            auth=self.hashes.challenge, key=key, challenge=challenge, now=self._now()
        )
        if await channel.authenticate(session):
            return session
        await channel.finish(session, WRITE_TIMEOUT)
        failure = session.failure or ""
        drop = self.intake.auth_failed(req, who, failure, session.reflected, self._now())
        self._dropped(drop, req, who)
        return None

    async def _serve_session(
        self,
        req: FenceRequest,
        ok: Proceed,
        policy: Policy,
        channel: tcp.Channel,
        started: float,
        who: str,
    ) -> None:
        session = await self._authenticate(req, ok, channel, who)
        if session is None:
            return
        deadline = self._now() + self.runner.budget_for(req.op)
        scope = policy.scope_for(ok.scope_key)
        device = scope.device if scope is not None else None
        gate, why = quorum_gate(req.op, self._status())
        if gate is Gate.DROP:
            # Quorum was lost during the handshake: we may not act, and must not claim anything.
            channel.abort()
            self.stats.drop("inquorate")
            log.warning(
                "%s %s from %s: no answer sent: %s", req.op.label, req.shown_target, who, why
            )
            self.records.refusal(who, req, "dropped", why, device)
            return
        if gate is Gate.FAIL:
            session.send_result(Result.FAIL)
            result, detail, domain = Result.FAIL, why, ""
        else:
            task = asyncio.current_task()
            assert task is not None
            self._acting[task] = _Acting(who, req, device, started)
            try:
                result, detail, domain = await self._act(
                    req, who, ok.scope_key, policy, session, deadline
                )
            finally:
                self._acting.pop(task, None)
        elapsed = (self._now() - started) * 1000
        entry = self.records.entry(
            who, req, result.label, detail, device=device, ms=elapsed, domain=domain
        )
        await self.records.answered(entry, req)
        await channel.finish(session, WRITE_TIMEOUT)
        # Released only once the connection is closed: a client that stops reading holds its
        # place (for WRITE_TIMEOUT at most), so stalled readers never exceed the quota.
        ok.ticket.release()
        self.stats.served[result.label] += 1
        log_request(req, who, device, result, elapsed, detail, domain)

    async def _act(
        self,
        req: FenceRequest,
        who: str,
        key: Key | None,
        policy: Policy,
        session: ServerSession,
        deadline: float,
    ) -> tuple[Result, str, str]:
        """Carry out the authenticated request; queue the answer on ``session``.

        Returns the result, a detail for the log, and the mapped domain when it differs.
        """
        requester = policy.requester(who)
        if isinstance(requester, Refused):
            session.send_result(Result.PERM)
            return Result.PERM, requester.reason, ""
        if req.op is Op.HOSTLIST:
            try:
                records = await self.runner.hostlist(deadline)
            except OutOfTime:
                session.send_result(Result.FAIL)
                return Result.FAIL, "no answer from the hypervisor in time", ""
            except BackendError as exc:
                session.send_result(Result.FAIL)
                return Result.FAIL, f"hypervisor error: {exc}", ""
            shown = policy.hostlist(key, records)
            session.send_hostlist(shown)
            return Result.SUCCESS, f"{len(shown)} of {len(records)} domains", ""
        allowed, exact, uuid_only = None, False, False
        target = req.domain
        if req.op.needs_domain:
            mapped = policy.map(key, req.domain)
            if isinstance(mapped, Refused):
                session.send_result(Result.PERM)
                return Result.PERM, mapped.reason, ""
            target, allowed = mapped.domain, mapped.allows
            exact, uuid_only = mapped.exact, mapped.uuid_only
        outcome = await self.runner.fence(
            req.op, target, deadline, allowed, exact=exact, uuid_only=uuid_only
        )
        session.send_result(outcome.result)
        domain = outcome.domain.name if outcome.domain is not None else target
        return outcome.result, outcome.detail, domain if domain != req.domain else ""

    async def drain(self, timeout: float) -> int:
        """Wait for sessions in flight; returns how many were still running at the timeout.

        Those are then cut off. A request that was being carried out gets an audit record with
        the result "unknown": the hypervisor never said what became of it, so neither can we,
        and the operator must check the domain before trusting either answer."""
        pending = set(self._tasks)
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            acting = self._acting.pop(task, None)
            if acting is not None:
                await self._record_unknown(acting, timeout)
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=1.0)
        return len(still)

    async def _record_unknown(self, acting: _Acting, waited: float) -> None:
        req = acting.req
        detail = (
            f"xvmd stopped after waiting {waited:g}s for the hypervisor; the outcome of "
            f"{req.op.label} is unknown (check the domain's state); no answer was sent"
        )
        ms = (self._now() - acting.started) * 1000
        entry = self.records.entry(acting.who, req, "unknown", detail, device=acting.device, ms=ms)
        await self.records.answered(entry, req)
        log.error(
            "%s %s from %s: result unknown: %s", req.op.label, req.shown_target, acting.who, detail
        )


@dataclass(frozen=True, slots=True)
class _Acting:
    who: str
    req: FenceRequest
    device: str | None
    started: float
