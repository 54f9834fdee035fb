"""One decision per request and round, the same on every member (pure).

Every candidate that receives a request multicasts a ``Claim``; CPG delivers the claims to
all members in one agreed order. The first claim of a round decides (``decide`` on the table
as it stands at that point of the order, identical on every member); later claims of the round
are ignored. The round ends, on every member at the same point of the order, when its
responder says ``Done`` or leaves the group; a retransmit of the request after that starts a
new round. No clock is involved: expiry by time would differ between hosts.

A host that joins during a round does not know it: it treats a later claim of that round as a
new one. Its decision can only differ from the others' if the table changed in between; the
window is one round trip, and docs/multi-host.md says so.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from xvmd.hosts.decide import Decision, decide
from xvmd.hosts.messages import Claim
from xvmd.hosts.table import Table
from xvmd.protocol.wire import FenceRequest, MalformedRequest, parse_request

MAX_ROUNDS = 4096
"""Rounds in progress remembered; past this the oldest is forgotten (on every member alike,
since all see the same order)."""


@dataclass(frozen=True, slots=True)
class Round:
    """A decided round: the request, who asked first, and what was decided."""

    packet: str  # ``round_key`` of the request
    req: FenceRequest
    claim: Claim
    decision: Decision


def round_key(req: FenceRequest) -> str:
    """What makes copies of one request one round: op, seqno and target, as the history
    compares them. The copies a client sends from each of its addresses, and its retransmits,
    differ in their random bytes and signature, never in these."""
    text = f"{int(req.op)}\0{req.seqno}\0{req.domain.casefold()}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Rounds:
    def __init__(self) -> None:
        self._open: OrderedDict[str, Round] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def claimed(self, claim: Claim, table: Table) -> Round | None:
        """The round ``claim`` opens, or None: its round is open already, or the request bytes
        are not a request (a peer's bug: counted by the caller)."""
        try:
            req = parse_request(claim.request)
        except MalformedRequest:
            return None
        packet = round_key(req)
        if packet in self._open:
            return None
        decision = decide(table, req.op, claim.domain, claim.uuid_only, claim.fingerprint)
        opened = Round(packet, req, claim, decision)
        if decision.responder is None:
            return opened  # nobody to end it: the next copy is decided afresh
        self._open[packet] = opened
        if len(self._open) > MAX_ROUNDS:
            self._open.popitem(last=False)
        return opened

    def done(self, node: int, packet: str) -> Round | None:
        """The round ends if ``node`` is its responder; returns it."""
        opened = self._open.get(packet)
        if opened is None or opened.decision.responder != node:
            return None
        return self._open.pop(packet)

    def left(self, members: frozenset[int] | set[int]) -> list[Round]:
        """Rounds whose responder left the group end: nobody else would end them."""
        gone = [r for r in self._open.values() if r.decision.responder not in members]
        for r in gone:
            del self._open[r.packet]
        return gone

    def open(self, packet: str) -> Round | None:
        return self._open.get(packet)
