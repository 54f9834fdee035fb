"""Duplicate suppression: the same op + seqno + domain within the window is one request.

Rules for this module:
1. No I/O; the clock is an argument.
2. A request is *recorded* only once its callback reached the client. Until then it is *pending*,
   and further copies with a different callback address are kept as alternates: the stock client
   sends one copy per local address, and if the first address cannot be reached the next one may
   (fence_virtd drops them, so a client with one unreachable address fails there).
3. Memory is bounded: at most ``max_entries`` recorded and as many pending keys, the oldest
   going first, and at most MAX_ALTERNATES callback addresses per pending key. Pending and
   recorded keys live apart, so a slow callback never delays expiry.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

from .wire import FenceRequest

DUPLICATE_WINDOW = 10.0
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


RequestKey = tuple[int, int, str]


def request_key(req: FenceRequest) -> RequestKey:
    return (int(req.op), req.seqno, req.domain.casefold())


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
    def __init__(self, window: float = DUPLICATE_WINDOW, max_entries: int = 65536) -> None:
        self.window = window
        self.max_entries = max_entries
        self._pending: OrderedDict[RequestKey, _Pending] = OrderedDict()
        self._recorded: OrderedDict[RequestKey, _Recorded] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending) + len(self._recorded)

    def admit(self, req: FenceRequest, now: float) -> Admission:
        self._purge(now)
        key = request_key(req)
        recorded = self._recorded.get(key)
        if recorded is not None:
            recorded.copies += 1
            return Admission.DUPLICATE
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

    def record(self, req: FenceRequest, now: float) -> None:
        """The callback reached the client: copies arriving within the window are duplicates."""
        key = request_key(req)
        pending = self._pending.pop(key, None)
        self._recorded.pop(key, None)
        self._recorded[key] = _Recorded(now, pending.copies if pending else 0)
        if len(self._recorded) > self.max_entries:
            self._recorded.popitem(last=False)

    def forget(self, req: FenceRequest) -> None:
        """The callback failed for every copy: a retransmit must be served again."""
        self._pending.pop(request_key(req), None)

    def _purge(self, now: float) -> None:
        limit = now - self.window
        recorded = self._recorded
        while recorded:
            key, entry = next(iter(recorded.items()))
            if entry.at > limit:
                break
            del recorded[key]
