"""One request's way through the daemon: verify, de-duplicate, call back, authenticate, act, answer.

Rules:
1. The reject path is cheap and silent per packet: size, parse, one digest, then a counter.
   Operators see drops in a periodic summary (and at debug level per packet), never a flood.
2. Power actions are answered only after authentication, and the answer is what the backend
   proved (see ``xvmd.operations``).
3. Every request that reaches the TCP phase ends in exactly one log line: requester, op,
   target, result, milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog, now_fields
from .backend import BackendError
from .executor import BackendRunner, Deadline
from .net import tcp
from .policy import Gate, Policy, Refused, quorum_gate
from .protocol.auth import Key, Rejected, check_datagram, verify_request
from .protocol.history import Admission, History
from .protocol.session import STREAM_REQUEST_TIMEOUT, ServerSession
from .protocol.wire import (
    CHALLENGE_SIZE,
    REQUEST_SIZE,
    FenceRequest,
    HashType,
    MalformedRequest,
    Op,
    Result,
    parse_request,
)
from .quorum import QuorumStatus

log = logging.getLogger("xvmd")
reqlog = logging.getLogger("xvmd.request")

WRITE_TIMEOUT = 10.0
RECENT = 100  # requests kept for `xvmd status`
BUSY_LOG_INTERVAL = 10.0


@dataclass
class Stats:
    dropped: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


@dataclass(frozen=True, slots=True)
class Auth:
    hash: HashType
    auth: HashType


class FenceService:
    def __init__(
        self,
        auth: Auth,
        policy: Policy,
        runner: BackendRunner,
        *,
        max_sessions: int = 128,
        now: Callable[[], float] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        quorum: Callable[[], QuorumStatus] | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.auth = auth
        self._min_hash = int(auth.hash)  # a plain int: compared once per datagram
        # Swapped whole on reload; each request keeps the policy it started with.
        self.policy = policy
        self.runner = runner
        self.history = History()
        self.stats = Stats()
        self.max_sessions = max_sessions
        self._now = now or asyncio.get_event_loop().time
        self._random = random_bytes
        self._tasks: set[asyncio.Task[None]] = set()
        # Tasks holding a session slot: taken at the start, given back once the answer is out.
        self._slots: set[asyncio.Task[Any]] = set()
        self._busy_logged = float("-inf")
        self._quorum = quorum  # None: --local, no quorum checks
        self._gate_logged: dict[tuple[int, int, str], float] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.audit = audit
        self._background: set[asyncio.Task[None]] = set()

    @property
    def active_sessions(self) -> int:
        return len(self._slots)

    # -- datagrams ------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> None:
        if len(data) != REQUEST_SIZE:
            self.stats.drop("size")
            return
        policy = self.policy
        key, reason = check_datagram(data, self._min_hash, policy.keys)
        if reason is not None:
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
        if req.callback is None:
            self.stats.drop("no-callback")
            log.debug("dropped request from %s: it names no callback address", source[0])
            return
        now = self._now()
        gate, why = self._gate(req.op)
        if gate is Gate.DROP:
            # Not recorded: once quorum is back, the client's retransmit is served.
            self._drop_inquorate(req, why, now)
            return
        admission = self.history.admit(req, now)
        if admission is Admission.DUPLICATE:
            self.stats.drop("duplicate")
            # The first copy is news to an operator; a replay storm must not flood the log.
            level = logging.INFO if self.history.copies(req) <= 1 else logging.DEBUG
            log.log(
                level,
                "duplicate %s %s seqno %d from %s dropped (already handled)",
                req.op.label,
                _target(req),
                req.seqno,
                req.address,
            )
            return
        if admission is Admission.ALTERNATE:
            log.debug(
                "copy of pending %s seqno %d via %s kept", req.op.label, req.seqno, req.address
            )
            return
        if len(self._slots) >= self.max_sessions:
            self.history.forget(req)
            self.stats.drop("busy")
            if now - self._busy_logged >= BUSY_LOG_INTERVAL:
                self._busy_logged = now
                log.warning(
                    "too busy (%d sessions): dropping requests, clients will retransmit "
                    "(latest: %s %s from %s)",
                    len(self._slots),
                    req.op.label,
                    _target(req),
                    req.address,
                )
            return
        self._spawn(self._serve_datagram(req, key, policy))

    def _gate(self, op: Op) -> tuple[Gate, str]:
        return quorum_gate(op, self._quorum() if self._quorum else None)

    def _drop_inquorate(self, req: FenceRequest, why: str, now: float) -> None:
        """Count the drop; log and audit it once per request, not once per retransmit."""
        self.stats.drop("inquorate")
        key = (int(req.op), req.seqno, req.domain.casefold())
        if now - self._gate_logged.get(key, float("-inf")) < 10.0:
            return
        if len(self._gate_logged) > 1024:
            self._gate_logged.clear()
        self._gate_logged[key] = now
        log.warning(
            "%s %s from %s dropped without answer: %s", req.op.label, _target(req), req.address, why
        )
        self._audit_later(self._remember(req.address or "?", req, None, "dropped", why, 0.0, ""))

    def _remember(
        self,
        who: str,
        req: FenceRequest,
        device: str | None,
        result: str,
        detail: str,
        ms: float,
        domain: str,
    ) -> dict[str, Any]:
        """Keep the request for ``xvmd status``; the same record goes to the audit trail."""
        quorum = self._quorum() if self._quorum else None
        entry: dict[str, Any] = {
            **now_fields(),
            "requester": who,
            "device": device,
            "op": req.op.label,
            "target": req.domain,
            "domain": domain or None,
            "seqno": req.seqno,
            "quorum": "not checked"
            if quorum is None
            else ("quorate" if quorum.quorate else f"not quorate: {quorum.reason}"),
            "result": result,
            "detail": detail,
            "ms": round(ms, 1),
        }
        self.recent.append(entry)
        return entry

    def _audit_later(self, entry: dict[str, Any]) -> None:
        """Refusals seen outside a session: written in the background, not fsynced."""
        if self.audit is not None:
            task = asyncio.create_task(self.audit.record(entry, durable=False))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _release(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._slots.discard(task)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        self._slots.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._slots.discard)

    async def _serve_datagram(self, req: FenceRequest, key: Key | None, policy: Policy) -> None:
        started = self._now()
        candidate: FenceRequest | None = req
        while candidate is not None:
            assert candidate.callback is not None
            address, port = candidate.callback
            try:
                channel = await tcp.connect_back(address, port)
            except tcp.CallbackFailed as exc:
                log.warning(
                    "cannot call back %s port %d for %s %s: %s",
                    address,
                    port,
                    req.op.label,
                    _target(req),
                    exc,
                )
                candidate = self.history.next_alternate(req)
                continue
            self.history.record(req, self._now())
            await self._serve_session(candidate, key, policy, channel, started)
            return
        self.history.forget(req)
        self.stats.drop("callback-failed")

    # -- the TCP listener (fence_virt -T) ------------------------------------------------------

    async def stream_client(self, channel: tcp.Channel) -> None:
        peer = channel.peer
        if len(self._slots) >= self.max_sessions:
            self.stats.drop("busy")
            channel.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._slots.add(task)
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
                key = verify_request(req, self.auth.hash, policy.keys)
            except (MalformedRequest, Rejected) as exc:
                self.stats.drop(exc.reason)
                log.info("dropped TCP request from %s: %s", peer[0], exc)
                channel.abort()
                return
            gate, why = self._gate(req.op)
            if gate is Gate.DROP:
                self._drop_inquorate(req, why, self._now())
                channel.abort()
                return
            await self._serve_session(req, key, policy, channel, started, requester=peer[0])
        finally:
            self._tasks.discard(task)
            self._slots.discard(task)

    # -- common ---------------------------------------------------------------------------------

    async def _serve_session(
        self,
        req: FenceRequest,
        key: Key | None,
        policy: Policy,
        channel: tcp.Channel,
        started: float,
        requester: str | None = None,
    ) -> None:
        who = requester or req.address or "?"
        if key is None and self.auth.auth is not HashType.NONE:
            # An unsigned request accepted under --hash none, but no key to answer challenges.
            log.warning(
                "%s %s from %s not served: no key loaded for --auth %s",
                req.op.label,
                _target(req),
                who,
                self.auth.auth.label,
            )
            channel.abort()
            return
        session = ServerSession(
            auth=self.auth.auth,
            key=key,
            challenge=self._random(CHALLENGE_SIZE),
            now=self._now(),
        )
        if not await channel.authenticate(session):
            self.stats.drop("auth-failed")
            log.warning(
                "%s %s from %s not served: authentication failed: %s",
                req.op.label,
                _target(req),
                who,
                session.failure,
            )
            await channel.finish(session, WRITE_TIMEOUT)
            self._audit_later(
                self._remember(who, req, None, "auth-failed", session.failure or "", 0.0, "")
            )
            return
        deadline = self._now() + self.runner.budget_for(req.op)
        scope = policy.scope_for(key)
        device = scope.device if scope is not None else None
        gate, why = self._gate(req.op)
        if gate is Gate.DROP:
            # Quorum was lost during the handshake: we may not act, and must not claim anything.
            channel.abort()
            self.stats.drop("inquorate")
            log.warning("%s %s from %s: no answer sent: %s", req.op.label, _target(req), who, why)
            self._audit_later(self._remember(who, req, device, "dropped", why, 0.0, ""))
            return
        if gate is Gate.FAIL:
            session.send_result(Result.FAIL)
            result, detail, domain = Result.FAIL, why, ""
        else:
            result, detail, domain = await self._act(req, who, key, policy, session, deadline)
        elapsed = (self._now() - started) * 1000
        entry = self._remember(who, req, device, result.label, detail, elapsed, domain)
        if self.audit is not None:
            # Before the result byte leaves: whoever heard "done" can find the record.
            await self.audit.record(entry, durable=req.op.is_power_action)
        await channel.finish(session, WRITE_TIMEOUT)
        # Released only once the connection is closed: a client that stops reading holds its
        # slot (for WRITE_TIMEOUT at most), so stalled readers never exceed max_sessions.
        self._release()
        self.stats.served[result.label] += 1
        mapped = f" (domain {domain})" if domain else ""
        if device is not None:
            who = f"{who} [{device}]"
        failed = result is Result.FAIL and req.op is not Op.NULL  # null always 'fails'
        level = logging.WARNING if failed or result is Result.PERM else logging.INFO
        reqlog.log(
            level,
            "%s %s %s%s -> %s in %.0f ms: %s",
            who,
            req.op.label,
            _target(req),
            mapped,
            result.label,
            elapsed,
            detail,
        )

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
            except Deadline:
                session.send_result(Result.FAIL)
                return Result.FAIL, "no answer from the hypervisor in time", ""
            except BackendError as exc:
                session.send_result(Result.FAIL)
                return Result.FAIL, f"hypervisor error: {exc}", ""
            shown = policy.hostlist(key, records)
            session.send_hostlist(shown)
            return Result.SUCCESS, f"{len(shown)} of {len(records)} domains", ""
        allowed = None
        target = req.domain
        if req.op.needs_domain:
            mapped = policy.map(key, req.domain)
            if isinstance(mapped, Refused):
                session.send_result(Result.PERM)
                return Result.PERM, mapped.reason, ""
            target, allowed = mapped.domain, mapped.allows
        outcome = await self.runner.fence(req.op, target, deadline, allowed)
        session.send_result(outcome.result)
        domain = outcome.domain.name if outcome.domain is not None else target
        return outcome.result, outcome.detail, domain if domain != req.domain else ""

    async def drain(self, timeout: float) -> int:
        """Wait for sessions in flight; returns how many were still running at the timeout."""
        pending = set(self._tasks)
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=timeout)
        return len(still)


def _target(req: FenceRequest) -> str:
    return repr(req.domain) if req.domain else "-"
