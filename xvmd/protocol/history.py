"""Duplicate suppression: the same op + seqno + domain within the window is one request.

Rules for this module:
1. No I/O; the clock is an argument.
2. A request is *recorded* only once its callback reached the client. Until then it is *pending*,
   and further copies with a different callback address are kept as alternates: the stock client
   sends one copy per local address, and if the first address cannot be reached the next one may
   (fence_virtd drops them, so a client with one unreachable address fails there).
3. Memory is bounded: at most ``max_entries`` keys; the oldest are evicted first.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

from .wire import FenceRequest

DUPLICATE_WINDOW = 10.0


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


@dataclass
class _Entry:
    recorded_at: float | None = None
    tried: set[tuple[str, int] | None] = field(default_factory=set)
    alternates: list[FenceRequest] = field(default_factory=list)


class History:
    def __init__(self, window: float = DUPLICATE_WINDOW, max_entries: int = 65536) -> None:
        self.window = window
        self.max_entries = max_entries
        self._entries: OrderedDict[RequestKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, req: FenceRequest, now: float) -> Admission:
        self._purge(now)
        key = request_key(req)
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry()
            entry.tried.add(req.callback)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return Admission.NEW
        if entry.recorded_at is None and req.callback not in entry.tried:
            entry.tried.add(req.callback)
            entry.alternates.append(req)
            return Admission.ALTERNATE
        return Admission.DUPLICATE

    def next_alternate(self, req: FenceRequest) -> FenceRequest | None:
        """After a failed callback: the next copy to try, or None (then call ``forget``)."""
        entry = self._entries.get(request_key(req))
        if entry is None or not entry.alternates:
            return None
        return entry.alternates.pop(0)

    def record(self, req: FenceRequest, now: float) -> None:
        """The callback reached the client: copies arriving within the window are duplicates."""
        key = request_key(req)
        entry = self._entries.pop(key, None) or _Entry()
        entry.recorded_at = now
        entry.alternates.clear()
        self._entries[key] = entry  # re-inserted at the end: entries stay ordered by age

    def forget(self, req: FenceRequest) -> None:
        """The callback failed for every copy: a retransmit must be served again."""
        self._entries.pop(request_key(req), None)

    def _purge(self, now: float) -> None:
        limit = now - self.window
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.recorded_at is None or entry.recorded_at > limit:
                break
            del self._entries[key]
