"""Duplicate suppression: the same op + seqno + domain within the window is one request, and a
power action handled once is not handled again for an hour.

Rules for this module:
1. No I/O; the clock is an argument.
2. A request is *recorded* only once its callback reached the client. Until then it is *pending*,
   and further copies with a different callback address are kept as alternates: the stock client
   sends one copy per local address, and if the first address cannot be reached the next one may
   (fence_virtd drops them, so a client with one unreachable address fails there).
3. Memory is bounded: at most ``max_entries`` recorded and as many pending keys, the oldest
   going first, and at most MAX_ALTERNATES callback addresses per pending key. Pending and
   recorded keys live apart, so a slow callback never delays expiry.
4. When the callback failed for every copy, the request is not called back again for
   CALLBACK_BACKOFF seconds: a replayed packet cannot turn into a connection attempt per copy,
   and the stock client's retransmit (every 2 s by default) still gets through.
5. A power action whose callback reached its client is remembered for DONE_WINDOW seconds
   (at most ``max_done`` per signing key): any copy arriving after the duplicate window,
   whichever interface it was captured on, is a replay. An honest client draws a new seqno
   (microseconds of the clock) for every run, so it would repeat one only by a one-in-a-million
   chance, and then the cluster's retry (a new run) gets through.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

from xvmd.protocol.replay import Memory
from xvmd.protocol.wire import FenceRequest, Op

DUPLICATE_WINDOW = 10.0
CALLBACK_BACKOFF = 1.0
"""Seconds a request whose callback failed is not called back again."""
DONE_WINDOW = 3600.0
"""Seconds a handled power action stays known, so that a replay of it is refused."""
MAX_DONE = 16384
MAX_ALTERNATES = 8
"""Callback addresses kept per pending request: the stock client sends one copy per local
address, so a few; more would let one key holder grow memory and retry time without limit."""


class Admission(enum.Enum):
    NEW = "new"
    """Not seen: handle it."""
    ALTERNATE = "alternate"
    """A copy of a pending request with another callback address: kept for a retry."""
    DUPLICATE = "duplicate"
    """Seen within the window (or a copy with a callback already tried): drop it."""
    BACKOFF = "backoff"
    """Its callback failed a moment ago: drop it until the back-off has passed."""
    REPLAYED = "replayed"
    """A power action handled earlier than the duplicate window: a replay, drop it."""


RequestKey = tuple[int, int, str]


def request_key(req: FenceRequest) -> RequestKey:
    return key_of(req.op, req.seqno, req.domain)


def key_of(op: Op, seqno: int, domain: str) -> RequestKey:
    """The identity of a request: op, seqno and the target in any case."""
    return (int(op), seqno, domain.casefold())


@dataclass(slots=True)
class _Pending:
    tried: set[tuple[str, int] | None] = field(default_factory=set)
    alternates: list[FenceRequest] = field(default_factory=list)
    copies: int = 0


@dataclass(slots=True)
class _Recorded:
    at: float
    copies: int = 0


class History:
    def __init__(
        self,
        window: float = DUPLICATE_WINDOW,
        max_entries: int = 65536,
        backoff: float = CALLBACK_BACKOFF,
        done_window: float = DONE_WINDOW,
        max_done: int = MAX_DONE,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self.backoff = backoff
        self._done: Memory[RequestKey] = Memory(done_window, max_done)  # power actions handled
        self._pending: OrderedDict[RequestKey, _Pending] = OrderedDict()
        self._recorded: OrderedDict[RequestKey, _Recorded] = OrderedDict()
        self._failed: OrderedDict[RequestKey, float] = OrderedDict()  # key -> back-off end

    def __len__(self) -> int:
        """Entries that expire within seconds (the hour-long memory of power actions aside)."""
        return len(self._pending) + len(self._recorded) + len(self._failed)

    @property
    def done_window(self) -> float:
        return self._done.window

    @property
    def done(self) -> int:
        """Power actions remembered for replay refusal."""
        return len(self._done)

    @property
    def pending(self) -> int:
        """Requests whose callback is in progress (at most ``max_entries``)."""
        return len(self._pending)

    @property
    def recorded(self) -> int:
        """Requests whose callback reached the client within the window (at most
        ``max_entries``)."""
        return len(self._recorded)

    @property
    def backing_off(self) -> int:
        """Requests whose callback failed a moment ago."""
        return len(self._failed)

    def knows(self, req: FenceRequest) -> bool:
        """True when some copy of ``req`` is being or was handled (or its callback failed)."""
        key = request_key(req)
        return any(key in d for d in (self._pending, self._recorded, self._failed)) or (
            req.op.is_power_action and key in self._done
        )

    def _is_done(self, req: FenceRequest, key: RequestKey, now: float) -> bool:
        return req.op.is_power_action and self._done.seen_at(key, now) is not None

    def admit(self, req: FenceRequest, now: float) -> Admission:
        self.expire(now)
        key = request_key(req)
        recorded = self._recorded.get(key)
        if recorded is not None:
            recorded.copies += 1
            return Admission.DUPLICATE
        if self._is_done(req, key, now):
            return Admission.REPLAYED
        if key in self._failed:
            return Admission.BACKOFF
        pending = self._pending.get(key)
        if pending is None:
            pending = _Pending()
            pending.tried.add(req.callback)
            self._pending[key] = pending
            if len(self._pending) > self.max_entries:
                self._pending.popitem(last=False)
            return Admission.NEW
        pending.copies += 1
        if req.callback not in pending.tried and len(pending.tried) < MAX_ALTERNATES:
            pending.tried.add(req.callback)
            pending.alternates.append(req)
            return Admission.ALTERNATE
        return Admission.DUPLICATE

    def copies(self, req: FenceRequest) -> int:
        """How many further copies of this request arrived so far (for quieter logging)."""
        key = request_key(req)
        entry = self._recorded.get(key) or self._pending.get(key)
        return entry.copies if entry is not None else 0

    def next_alternate(self, req: FenceRequest) -> FenceRequest | None:
        """After a failed callback: the next copy to try, or None (then call ``forget``)."""
        entry = self._pending.get(request_key(req))
        if entry is None or not entry.alternates:
            return None
        return entry.alternates.pop(0)

    def record(self, req: FenceRequest, now: float, owner: bytes = b"") -> None:
        """The callback reached the client: copies arriving within the window are duplicates.
        ``owner`` (the id of the key that signed it) bounds the memory of power actions."""
        key = request_key(req)
        pending = self._pending.pop(key, None)
        self._recorded.pop(key, None)
        self._recorded[key] = _Recorded(now, pending.copies if pending else 0)
        if len(self._recorded) > self.max_entries:
            self._recorded.popitem(last=False)
        if req.op.is_power_action:
            self._done.remember(key, now, owner)

    def remember_done(self, key: RequestKey, at: float, owner: bytes = b"restored") -> None:
        """A power action handled at ``at``, read back after a restart (times in order)."""
        self._done.remember(key, at, owner)

    def admit_stream(self, req: FenceRequest, now: float, owner: bytes = b"") -> Admission:
        """A request read from a TCP client: its connection is already there, so it is
        recorded at once (NEW) or is a copy of one seen within the window (DUPLICATE)."""
        self.expire(now)
        key = request_key(req)
        entry = self._recorded.get(key) or self._pending.get(key)
        if entry is not None:
            entry.copies += 1
            return Admission.DUPLICATE
        if self._is_done(req, key, now):
            return Admission.REPLAYED
        self.record(req, now, owner)
        return Admission.NEW

    def forget(self, req: FenceRequest) -> None:
        """The request was not handled (too busy): a retransmit must be served again."""
        self._pending.pop(request_key(req), None)

    def failed(self, req: FenceRequest, now: float) -> None:
        """The callback failed for every copy: retransmits are welcome after the back-off."""
        key = request_key(req)
        self._pending.pop(key, None)
        self._failed.pop(key, None)
        self._failed[key] = now + self.backoff
        if len(self._failed) > self.max_entries:
            self._failed.popitem(last=False)

    def expire(self, now: float) -> None:
        """Drop what has outlived its window (admissions do this themselves)."""
        self._done.expire(now)
        failed = self._failed
        while failed:
            key, until = next(iter(failed.items()))
            if until > now:
                break
            del failed[key]
        limit = now - self.window
        recorded = self._recorded
        while recorded:
            key, entry = next(iter(recorded.items()))
            if entry.at > limit:
                break
            del recorded[key]
