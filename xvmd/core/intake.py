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
from collections.abc import Sequence
from dataclasses import dataclass

from xvmd.core.addresses import callback_problem, sender
from xvmd.core.droplog import KEPT, Drop, DropLines
from xvmd.core.limits import Full, Limits, Quota, Ticket
from xvmd.core.policy import Gate, Policy, Refused, quorum_gate
from xvmd.protocol.auth import Key
from xvmd.protocol.drops import DropReason
from xvmd.protocol.history import Admission, History, RequestKey, request_key
from xvmd.protocol.replay import ReplayGuard, fingerprint
from xvmd.protocol.wire import FenceRequest, HashType
from xvmd.quorum import QuorumStatus

SETTLE = 2.0
"""Seconds to wait before reporting a copy from a foreign address: a node with several
addresses sends a copy from each, and only a request no copy of which was served is news."""
MAX_UNPLACED = 1024
"""Requests from foreign addresses waiting out SETTLE: bounded, since the sender picks how
many distinct requests it makes; past this the oldest goes unreported (it is still dropped)."""


@dataclass(frozen=True, slots=True)
class Proceed:
    """Admitted: call back (or, for a stream, authenticate) with these keys."""

    session_key: Key | None  # answers the challenge-response (None: --auth none)
    scope_key: Key | None  # whose device scope applies (None: every served device)
    ticket: Ticket  # the session's place in its quota, released when the session ends
    owner: bytes  # the id of the key that signed the request (b"": unsigned)


@dataclass(frozen=True, slots=True)
class Keys:
    """Which key answers the challenge-response and whose device scope a request gets."""

    session: Key | None  # answers the challenge-response (None: --auth none)
    scope: Key | None  # passed to ``Policy.scope_for`` (None: every served device)


def answering_keys(
    key: Key | None, challenge: HashType, loaded: Sequence[Key]
) -> Keys | DropReason:
    """The keys of a verified request (``key``: the one its signature proved, None: unsigned).

    The reach docs/security.md ("Unsigned requests") and docs/protocol.md (section 3) promise:

    - signed: the key that verified it answers the challenge and its device is the scope;
    - unsigned (only with --hash none) and --auth none: no key answers and the scope is every
      device this host serves (every domain without cluster.conf), never one device's;
    - unsigned, --auth on, one key loaded: the challenge-response proves that key, so it
      answers and its device is the scope;
    - unsigned, --auth on, several keys: which one does the client check the answer with?
      ``unsigned-ambiguous``; no key at all: ``no-key``.
    """
    if key is not None or challenge is HashType.NONE:
        return Keys(key, key)
    if len(loaded) == 1:
        return Keys(loaded[0], loaded[0])
    return DropReason.UNSIGNED_AMBIGUOUS if loaded else DropReason.NO_KEY


def _owner(key: Key | None) -> bytes:
    """Whose quota of replay memory a request fills: its signing key's (b"": unsigned)."""
    return key.id if key is not None else b""


class Intake:
    def __init__(
        self,
        auth: HashType,
        limits: Limits,
        *,
        history: History | None = None,
        replays: ReplayGuard | None = None,
    ) -> None:
        self.auth = auth
        # Both memories are bounded; pass your own to choose other bounds.
        self.history = history if history is not None else History()
        self.replays = replays if replays is not None else ReplayGuard()
        # keyed by callback (address, port), and by peer address (``sender``)
        self.sessions = Quota(limits.max_sessions, limits.per_callback)
        self.streams = Quota(limits.max_stream, limits.per_peer)
        self.lines = DropLines()
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
            why = f"request from {req.address} names no callback address"
            return Drop(DropReason.NO_CALLBACK, why)
        address = req.callback[0]
        problem = callback_problem(req.packed_address)
        if problem is not None:
            why = f"{req.op.label} {req.shown_target}: callback to {problem} ({address}) refused"
            return self.lines.quiet(DropReason.BAD_CALLBACK, address, now, why)
        checked = self._common(req, key, policy, status, now, address)
        if isinstance(checked, Drop):
            return checked
        keys, fp = checked
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
        if isinstance(ticket, Full):
            self.history.forget(req)  # not handled: the client's retransmit is welcome
            return self._busy(req, ticket, now)
        return Proceed(keys.session, keys.scope, ticket, owner)

    def _not_a_node(self, req: FenceRequest, why: str, now: float) -> Drop:
        """Dropped quietly for now; ``overdue`` reports it if no other copy is served."""
        key = request_key(req)
        if not self.history.knows(req) and key not in self._unplaced:
            self._unplaced[key] = (req, why, now)
            if len(self._unplaced) > MAX_UNPLACED:
                self._unplaced.popitem(last=False)
        return Drop(DropReason.NOT_A_NODE)

    def overdue(self, now: float) -> list[tuple[FenceRequest, Drop]]:
        """Requests that came only from addresses of no cluster node: what to log and record."""
        out = []
        while self._unplaced:
            key, (req, why, at) = next(iter(self._unplaced.items()))
            if now - at < SETTLE:
                break
            del self._unplaced[key]
            if not self.history.knows(req):
                drop = self.lines.once_per_request(req, now, DropReason.NOT_A_NODE, why)
                if drop.message is not None:
                    out.append((req, drop))
        return out

    def callback_failed(
        self, req: FenceRequest, address: str, port: int, why: str, now: float
    ) -> str | None:
        """A connect-back failed; the line to log (None: counted quietly)."""
        what = f"{req.op.label} {req.shown_target}"
        text = f"cannot call back {address} port {port} for {what}: {why}"
        return self.lines.per_callback((address, port), now, text)

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
        if ticket is Full.TOTAL:
            reason = DropReason.LISTENER_BUSY
            why = f"TCP listener full ({self.streams.used} clients)"
        else:
            reason = DropReason.LISTENER_PEER_BUSY
            why = f"{self.streams.per_key} connections already open"
        return self.lines.quiet(reason, peer, now, f"TCP listener: refusing {peer}: {why}")

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
        keys, fp = checked
        owner = _owner(key)
        admission = self.history.admit_stream(req, now, owner)
        if fp is not None:
            self.replays.remember(fp, now, owner)
        if admission is not Admission.NEW:
            return self._not_new(req, admission, now, peer)
        return Proceed(keys.session, keys.scope, ticket, owner)

    def forged(self, who: str, now: float) -> Drop:
        """A signature made from an answer to a challenge (length extension): an attack."""
        why = (
            f"ATTACK: request from {who} carries a signature made by length extension of a "
            "challenge answer; refused"
        )
        return self.lines.quiet(DropReason.FORGED, who, now, why, logging.ERROR)

    def auth_failed(
        self, req: FenceRequest, who: str, failure: str, reflected: bool, now: float
    ) -> Drop:
        """The challenge-response failed; a reflected challenge is an attack, said so."""
        if reflected:
            why = (
                f"ATTACK: {who} sent back a challenge this daemon issued to another session "
                f"(challenge reflection) for {req.op.label} {req.shown_target}; refused"
            )
            drop = self.lines.quiet(DropReason.REFLECTION, who, now, why, logging.ERROR)
            logged = drop.message is not None
            return Drop(drop.reason, drop.message, drop.level, why, logged, drop.reason)
        what = f"{req.op.label} {req.shown_target} from {who}"
        why = f"{what} not served: authentication failed: {failure}"
        drop = self.lines.quiet(DropReason.AUTH_FAILED, who, now, why)
        # A refusal record only when logged: a flood must not fill the disk either.
        logged = drop.message is not None
        return Drop(drop.reason, drop.message, drop.level, failure, logged, drop.reason)

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
            return Drop(DropReason.DUPLICATE)
        return self._replayed(req, now, who)

    def _common(
        self,
        req: FenceRequest,
        key: Key | None,
        policy: Policy,
        status: QuorumStatus | None,
        now: float,
        who: str,
    ) -> tuple[Keys, bytes | None] | Drop:
        """Exact-bytes replay, key choice and quorum, the checks both paths share: (the keys,
        the packet's fingerprint when signed)."""
        fp = self._fingerprint(req, now, who)
        if isinstance(fp, Drop):
            return fp
        keys = self._keys(req, key, policy, now, who)
        if isinstance(keys, Drop):
            return keys
        refused = self._quorum_admits(req, key, status, fp, now)
        return refused if refused is not None else (keys, fp)

    def _quorum_admits(
        self,
        req: FenceRequest,
        key: Key | None,
        status: QuorumStatus | None,
        fp: bytes | None,
        now: float,
    ) -> Drop | None:
        """Quorum, stage 1 of 2, before any connection (stage 2 is in ``xvmd.core.pipeline``,
        after the handshake): an inquorate host must not even call back for a power action, so
        it takes no part in fencing at all and the client times out, as with a host that is
        down. None: admitted."""
        gate, why = quorum_gate(req.op, status)
        if gate is not Gate.DROP:
            return None  # Gate.FAIL (monitor) is answered after authentication, by stage 2
        if fp is not None:
            # These bytes are never acted on later: the client's retransmit is, once
            # quorum is back, but a captured copy cannot be saved for a moment it suits.
            self.replays.remember(fp, now, _owner(key))
        # Not recorded in the history: once quorum is back, the retransmit is served.
        return self.lines.once_per_request(req, now, DropReason.INQUORATE, why)

    def _replayed(self, req: FenceRequest, now: float, who: str) -> Drop:
        why = (
            f"replayed {req.op.label} {req.shown_target} seqno {req.seqno} from {who} dropped: "
            "this request was seen before, longer ago than any retransmit"
        )
        return self.lines.quiet(DropReason.REPLAYED, who, now, why)

    def _keys(
        self, req: FenceRequest, key: Key | None, policy: Policy, now: float, who: str
    ) -> Keys | Drop:
        chosen = answering_keys(key, self.auth, policy.keys)
        if isinstance(chosen, Keys):
            return chosen
        if chosen is DropReason.UNSIGNED_AMBIGUOUS:
            which = f"{len(policy.keys)} devices' keys could be meant"
        else:
            which = "none is loaded"
        why = (
            f"unsigned {req.op.label} {req.shown_target} from {who} dropped: --auth "
            f"{self.auth.label} needs a key for the challenge, and {which}"
        )
        return self.lines.quiet(chosen, who, now, why)

    def _not_new(self, req: FenceRequest, admission: Admission, now: float, who: str) -> Drop:
        if admission is Admission.ALTERNATE:
            return KEPT
        if admission is Admission.BACKOFF:
            return Drop(DropReason.CALLBACK_BACKOFF)
        if admission is Admission.REPLAYED:
            return self._replayed(req, now, who)
        # The first copy is news to an operator; a replay storm must not flood the log.
        first = self.history.copies(req) <= 1
        why = (
            f"duplicate {req.op.label} {req.shown_target} seqno {req.seqno} from {who} "
            "dropped (already handled)"
        )
        return Drop(DropReason.DUPLICATE, why, logging.INFO if first else logging.DEBUG)

    def _busy(self, req: FenceRequest, why: Full, now: float) -> Drop:
        assert req.callback is not None
        if why is Full.TOTAL:
            text = (
                f"too busy ({self.sessions.used} sessions): dropping requests, clients will "
                f"retransmit (latest: {req.op.label} {req.shown_target} from {req.address})"
            )
            return self.lines.quiet(DropReason.BUSY, None, now, text)
        address, port = req.callback
        text = (
            f"{self.sessions.per_key} sessions already call back {address} port {port}: "
            f"{req.op.label} {req.shown_target} dropped until one ends"
        )
        return self.lines.quiet(DropReason.CALLBACK_BUSY, req.callback, now, text)

    def summaries(self, now: float) -> list[str]:
        """Counts of repeats that were kept quiet, owed once their interval has passed."""
        return self.lines.summaries(now)
