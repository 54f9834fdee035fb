"""What happens to a verified request before any connection is made: every check that costs no
I/O, in one place, and the bounds that keep one sender from starving the others.

A datagram whose signature verified goes through, in this order (each drop is counted under its
reason; docs/security.md explains each):

1. ``bad-callback``: it names an address no client listens on (0.0.0.0, ::, multicast,
   broadcast, IPv6 link-local without a scope).
2. ``replayed``: the exact bytes of a signed request were seen within the last hour, or a power
   action was handled within the hour (any copy of it).
3. ``unsigned-ambiguous``: an unsigned request (``--hash none``) while several keys could be
   meant for the challenge-response.
4. ``inquorate``: a power action while this host's partition is not quorate.
5. ``not-a-node``: in cluster mode, the callback address belongs to no cluster node.
6. ``duplicate`` / ``callback-backoff``: a copy of a request handled (or whose callback failed)
   a moment ago; copies with another callback address are kept as alternates.
7. ``callback-busy`` / ``busy``: too many sessions for this callback address and port, or in
   all.

A request from the TCP listener (``fence_virt -T``) goes through 2-4 and the duplicate check,
with its own session quota (``listener-busy``, ``listener-peer-busy``).

Rules:
1. Pure: the clock, the policy and the quorum status are arguments; the service does the I/O.
2. Log lines come out ready-made and rate-limited: a flood of one kind costs one line per
   interval, with a count.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from xvmd.core.addresses import callback_problem, sender
from xvmd.core.limits import Limits, Quota, Throttle, Ticket
from xvmd.core.policy import Gate, Policy, Refused, quorum_gate
from xvmd.protocol.auth import Key
from xvmd.protocol.history import Admission, History, RequestKey, request_key
from xvmd.protocol.replay import ReplayGuard, fingerprint
from xvmd.protocol.wire import FenceRequest, HashType
from xvmd.quorum import QuorumStatus

FLOOD_INTERVAL = 60.0
"""Seconds between two log lines about the same kind of drop from the same source."""
PER_REQUEST_INTERVAL = 10.0
"""Seconds between two log lines (and refusal records) about the same request."""
SETTLE = 2.0
"""Seconds to wait before reporting a copy from a foreign address: a node with several
addresses sends a copy from each, and only a request no copy of which was served is news."""
MAX_UNPLACED = 1024


@dataclass(frozen=True, slots=True)
class Proceed:
    """Admitted: call back (or, for a stream, authenticate) with these keys."""

    session_key: Key | None  # answers the challenge-response (None: --auth none)
    scope_key: Key | None  # whose device scope applies (None: every served device)
    ticket: Ticket  # the session's place in its quota, released when the session ends
    owner: bytes  # the id of the key that signed the request (b"": unsigned)


@dataclass(frozen=True, slots=True)
class Drop:
    """Not served. ``message`` is None when nothing should be logged beyond debug level."""

    reason: str
    message: str | None = None
    level: int = logging.DEBUG
    detail: str = ""  # with ``record``: why, for `xvmd status` and the audit trail
    record: bool = False
    result: str = "dropped"  # the result recorded (auth failures: after a connection)


KEPT = Drop("alternate")  # a copy kept for a retry of the callback: not counted as a drop


def _owner(key: Key | None) -> bytes:
    """Whose quota of replay memory a request fills: its signing key's (b"": unsigned)."""
    return key.id if key is not None else b""


class Intake:
    def __init__(self, auth: HashType, limits: Limits) -> None:
        self.auth = auth
        self.history = History()
        self.replays = ReplayGuard()
        # keyed by callback (address, port), and by peer address (``sender``)
        self.sessions = Quota(limits.max_sessions, limits.per_callback)
        self.streams = Quota(limits.max_stream, limits.per_peer)
        self.per_source = Throttle(FLOOD_INTERVAL)
        self.per_request = Throttle(PER_REQUEST_INTERVAL)
        # Copies from addresses of no cluster node, reported only if no copy gets served.
        self._unplaced: OrderedDict[RequestKey, tuple[FenceRequest, str, float]] = OrderedDict()

    # -- the multicast path ---------------------------------------------------------------------

    def datagram(
        self,
        req: FenceRequest,
        key: Key | None,
        policy: Policy,
        status: QuorumStatus | None,
        now: float,
    ) -> Proceed | Drop:
        if req.callback is None or req.address is None:
            return Drop("no-callback", f"request from {req.address} names no callback address")
        address = req.callback[0]
        problem = callback_problem(req.packed_address)
        if problem is not None:
            why = f"{req.op.label} {req.shown_target}: callback to {problem} ({address}) refused"
            return self._quiet("bad-callback", address, now, why)
        checked = self._common(req, key, policy, status, now, address)
        if isinstance(checked, Drop):
            return checked
        session_key, scope_key, fp = checked
        node = policy.requester(address)
        if isinstance(node, Refused):
            return self._not_a_node(req, node.reason, now)
        admission = self.history.admit(req, now)
        owner = _owner(key)
        if fp is not None:
            # Every copy a key holder's client sent, even one dropped as a duplicate: if this
            # request is never handled, a captured copy must not be acted on later either.
            self.replays.remember(fp, now, owner)
        if admission is not Admission.NEW:
            return self._not_new(req, admission, now, address)
        ticket = self.sessions.take(req.callback)
        if isinstance(ticket, str):
            self.history.forget(req)  # not handled: the client's retransmit is welcome
            return self._busy(req, ticket, now)
        return Proceed(session_key, scope_key, ticket, owner)

    def _not_a_node(self, req: FenceRequest, why: str, now: float) -> Drop:
        """Dropped quietly for now; ``overdue`` reports it if no other copy is served."""
        key = request_key(req)
        if not self.history.knows(req) and key not in self._unplaced:
            self._unplaced[key] = (req, why, now)
            if len(self._unplaced) > MAX_UNPLACED:
                self._unplaced.popitem(last=False)
        return Drop("not-a-node")

    def overdue(self, now: float) -> list[tuple[FenceRequest, Drop]]:
        """Requests that came only from addresses of no cluster node: what to log and record."""
        out = []
        while self._unplaced:
            key, (req, why, at) = next(iter(self._unplaced.items()))
            if now - at < SETTLE:
                break
            del self._unplaced[key]
            if not self.history.knows(req):
                drop = self._per_request_drop(req, now, "not-a-node", why)
                if drop.message is not None:
                    out.append((req, drop))
        return out

    def callback_failed(
        self, req: FenceRequest, address: str, port: int, why: str, now: float
    ) -> str | None:
        """A connect-back failed; the line to log (None: counted quietly)."""
        n = self.per_source.hit(("callback-failed", (address, port)), now)
        if n is None:
            return None
        more = f" ({n} more failures since the last report)" if n else ""
        what = f"{req.op.label} {req.shown_target}"
        return f"cannot call back {address} port {port} for {what}: {why}{more}"

    def all_callbacks_failed(self, req: FenceRequest, now: float) -> None:
        self.history.failed(req, now)

    def connected(self, req: FenceRequest, ok: Proceed, now: float) -> None:
        self.history.record(req, now, ok.owner)

    # -- the TCP listener -----------------------------------------------------------------------

    def open_stream(self, peer: str, now: float) -> Ticket | Drop:
        peer = sender(peer)
        ticket = self.streams.take(peer)
        if isinstance(ticket, Ticket):
            return ticket
        if ticket == "full":
            reason, why = "listener-busy", f"TCP listener full ({self.streams.used} clients)"
        else:
            reason, why = "listener-peer-busy", f"{self.streams.per_key} connections already open"
        return self._quiet(reason, peer, now, f"TCP listener: refusing {peer}: {why}")

    def stream(
        self,
        req: FenceRequest,
        key: Key | None,
        policy: Policy,
        status: QuorumStatus | None,
        now: float,
        peer: str,
        ticket: Ticket,
    ) -> Proceed | Drop:
        checked = self._common(req, key, policy, status, now, peer)
        if isinstance(checked, Drop):
            return checked
        session_key, scope_key, fp = checked
        owner = _owner(key)
        admission = self.history.admit_stream(req, now, owner)
        if fp is not None:
            self.replays.remember(fp, now, owner)
        if admission is not Admission.NEW:
            return self._not_new(req, admission, now, peer)
        return Proceed(session_key, scope_key, ticket, owner)

    def forged(self, who: str, now: float) -> Drop:
        """A signature made from an answer to a challenge (length extension): an attack."""
        why = (
            f"ATTACK: request from {who} carries a signature made by length extension of a "
            "challenge answer; refused"
        )
        return self._quiet("forged", who, now, why, logging.ERROR)

    def auth_failed(
        self, req: FenceRequest, who: str, failure: str, reflected: bool, now: float
    ) -> Drop:
        """The challenge-response failed; a reflected challenge is an attack, said so."""
        if reflected:
            why = (
                f"ATTACK: {who} sent back a challenge this daemon issued to another session "
                f"(challenge reflection) for {req.op.label} {req.shown_target}; refused"
            )
            drop = self._quiet("reflection", who, now, why, logging.ERROR)
            logged = drop.message is not None
            return Drop(drop.reason, drop.message, drop.level, why, logged, "reflection")
        what = f"{req.op.label} {req.shown_target} from {who}"
        why = f"{what} not served: authentication failed: {failure}"
        drop = self._quiet("auth-failed", who, now, why)
        # A refusal record only when logged: a flood must not fill the disk either.
        return Drop(
            drop.reason, drop.message, drop.level, failure, drop.message is not None, "auth-failed"
        )

    # -- shared ---------------------------------------------------------------------------------

    def _fingerprint(self, req: FenceRequest, now: float, who: str) -> bytes | Drop | None:
        """A signed request's fingerprint, or a Drop when these exact bytes came before:
        seconds ago, a network duplicate; longer ago, a replay. None: unsigned. Read-only
        requests count too: a replayed ``status`` called back while the requester's own client
        waits on that port would give that client the answer to another question."""
        if req.hashtype is HashType.NONE:
            return None
        fp = fingerprint(req.raw)
        age = self.replays.age(fp, now)
        if age is None:
            return fp
        if age < self.history.window:
            return Drop("duplicate")
        return self._replayed(req, now, who)

    def _common(
        self,
        req: FenceRequest,
        key: Key | None,
        policy: Policy,
        status: QuorumStatus | None,
        now: float,
        who: str,
    ) -> tuple[Key | None, Key | None, bytes | None] | Drop:
        """Exact-bytes replay, key choice and quorum, the checks both paths share: (session
        key, scope key, the packet's fingerprint when signed)."""
        fp = self._fingerprint(req, now, who)
        if isinstance(fp, Drop):
            return fp
        keys = self._keys(req, key, policy, now, who)
        if isinstance(keys, Drop):
            return keys
        gate, why = quorum_gate(req.op, status)
        if gate is Gate.DROP:
            if fp is not None:
                # These bytes are never acted on later: the client's retransmit is, once
                # quorum is back, but a captured copy cannot be saved for a moment it suits.
                self.replays.remember(fp, now, _owner(key))
            # Not recorded in the history: once quorum is back, the retransmit is served.
            return self._per_request_drop(req, now, "inquorate", why)
        return keys[0], keys[1], fp

    def _replayed(self, req: FenceRequest, now: float, who: str) -> Drop:
        why = (
            f"replayed {req.op.label} {req.shown_target} seqno {req.seqno} from {who} dropped: "
            "this request was seen before, longer ago than any retransmit"
        )
        return self._quiet("replayed", who, now, why)

    def _keys(
        self, req: FenceRequest, key: Key | None, policy: Policy, now: float, who: str
    ) -> tuple[Key | None, Key | None] | Drop:
        """(session key, scope key). A signed request's key answers and scopes. An unsigned one
        (only with --hash none) reaches every device this host serves when the challenge is off
        too; otherwise the one loaded key answers the challenge and its device is the scope."""
        if key is not None or self.auth is HashType.NONE:
            return key, key
        if len(policy.keys) == 1:
            return policy.keys[0], policy.keys[0]
        if policy.keys:
            reason, which = "unsigned-ambiguous", f"{len(policy.keys)} devices' keys could be meant"
        else:
            reason, which = "no-key", "none is loaded"
        why = (
            f"unsigned {req.op.label} {req.shown_target} from {who} dropped: --auth "
            f"{self.auth.label} needs a key for the challenge, and {which}"
        )
        return self._quiet(reason, who, now, why)

    def _not_new(self, req: FenceRequest, admission: Admission, now: float, who: str) -> Drop:
        if admission is Admission.ALTERNATE:
            return KEPT
        if admission is Admission.BACKOFF:
            return Drop("callback-backoff")
        if admission is Admission.REPLAYED:
            return self._replayed(req, now, who)
        # The first copy is news to an operator; a replay storm must not flood the log.
        first = self.history.copies(req) <= 1
        why = (
            f"duplicate {req.op.label} {req.shown_target} seqno {req.seqno} from {who} "
            "dropped (already handled)"
        )
        return Drop("duplicate", why, logging.INFO if first else logging.DEBUG)

    def _busy(self, req: FenceRequest, why: str, now: float) -> Drop:
        assert req.callback is not None
        if why == "full":
            text = (
                f"too busy ({self.sessions.used} sessions): dropping requests, clients will "
                f"retransmit (latest: {req.op.label} {req.shown_target} from {req.address})"
            )
            return self._quiet("busy", None, now, text)
        address, port = req.callback
        text = (
            f"{self.sessions.per_key} sessions already call back {address} port {port}: "
            f"{req.op.label} {req.shown_target} dropped until one ends"
        )
        return self._quiet("callback-busy", req.callback, now, text)

    def _quiet(
        self, reason: str, source: Hashable, now: float, why: str, level: int = logging.WARNING
    ) -> Drop:
        n = self.per_source.hit((reason, source), now)
        if n is None:
            return Drop(reason)
        more = f" ({n} more since the last report)" if n else ""
        return Drop(reason, why + more, level)

    def _per_request_drop(self, req: FenceRequest, now: float, reason: str, why: str) -> Drop:
        """Logged and recorded once per request, not once per retransmit."""
        if self.per_request.hit((reason, request_key(req)), now) is None:
            return Drop(reason)
        text = f"{req.op.label} {req.shown_target} from {req.address} dropped without answer: {why}"
        return Drop(reason, text, logging.WARNING, why, record=True)

    def summaries(self, now: float) -> list[str]:
        """Counts of repeats that were kept quiet, owed once their interval has passed."""
        self.per_request.due(now)  # only forgets: one line per request is enough
        lines = []
        for key, n in self.per_source.due(now):
            assert isinstance(key, tuple)
            reason, source = key
            where = _source(source)
            lines.append(f"{reason}: {n} more from {where} in the last {FLOOD_INTERVAL:g} s")
        return lines


def _source(source: object) -> str:
    if source is None:
        return "all senders"
    if isinstance(source, tuple):
        return f"{source[0]} port {source[1]}"
    return str(source)
