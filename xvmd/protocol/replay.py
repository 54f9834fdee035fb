"""Replay protection: the exact bytes of a signed packet count once per hour.

The stock client draws a fresh seqno for every run and fresh ``random`` bytes for every packet
it signs, retransmits included (fence-agents ``client/mcast.c``: seqno from ``tv_usec`` once per
run; ``sign_request`` fills ``random`` per packet). So the exact bytes of an honest signed request
never arrive twice: a second arrival is a network duplicate (within seconds) or a replay by
whoever captured the packet. This catches a captured packet that was never acted on (it arrived
while the host was not quorate, or its callback failed), and replays of read-only requests,
whose callback could reach the requester's client while it waits for the answer to another
question; ``history.py`` remembers the power actions that were acted on, whichever copy is
replayed.

Rules for this module:
1. No I/O; the clock is an argument.
2. Only signed packets are kept (unsigned packets carry no random bytes, so an honest client's
   retransmits are identical). Nobody without a key can add an entry.
3. Memory is bounded: ``max_entries`` fingerprints per key that signed them, the oldest going
   first (``Memory``); ``remember`` is called with times that never go backwards.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")

REPLAY_WINDOW = 3600.0
"""Seconds during which the exact bytes of a signed request are never acted on again."""
MAX_ENTRIES = 16384
"""Per key: one key holder's flood cannot push out what another guest cluster's key signed."""


def fingerprint(raw: bytes) -> bytes:
    """16 bytes naming one exact packet; safe to write down (reveals nothing of the packet)."""
    return hashlib.sha256(raw).digest()[:16]


class Memory(Generic[T]):
    """Items remembered for ``window`` seconds, in partitions by owner (the key that signed
    them), at most ``max_entries`` per owner, the oldest going first: a key holder flooding
    the daemon can push out its own entries only, never another guest cluster's."""

    def __init__(self, window: float, max_entries: int) -> None:
        self.window = window
        self.max_entries = max_entries
        self._owners: dict[bytes, OrderedDict[T, float]] = {}
        self._expired = float("-inf")  # when expire last ran

    def __len__(self) -> int:
        return sum(len(items) for items in self._owners.values())

    def __contains__(self, item: T) -> bool:
        """Seen and not yet forgotten (``expire`` sweeps at most once a second)."""
        return any(item in items for items in self._owners.values())

    def remember(self, item: T, at: float, owner: bytes = b"") -> None:
        """Record ``item`` as seen at ``at`` (times per owner never go backwards)."""
        if item in self:
            return
        items = self._owners.setdefault(owner, OrderedDict())
        items[item] = at
        while len(items) > self.max_entries:
            items.popitem(last=False)

    def seen_at(self, item: T, now: float) -> float | None:
        """When ``item`` was first seen within the window, or None."""
        self.expire(now)
        for items in self._owners.values():
            at = items.get(item)
            if at is not None:
                return at if at > now - self.window else None
        return None

    def expire(self, now: float) -> None:
        """Forget what has outlived the window; a sweep at most once a second (hot path)."""
        if now - self._expired < 1.0:
            return
        self._expired = now
        limit = now - self.window
        for owner, items in list(self._owners.items()):
            while items:
                oldest, at = next(iter(items.items()))
                if at > limit:
                    break
                del items[oldest]
            if not items:
                del self._owners[owner]


class ReplayGuard(Memory[bytes]):
    """Fingerprints of the signed packets seen within the hour."""

    def __init__(self, window: float = REPLAY_WINDOW, max_entries: int = MAX_ENTRIES) -> None:
        super().__init__(window, max_entries)

    def age(self, fp: bytes, now: float) -> float | None:
        """Seconds since ``fp`` was first seen, or None when it was not seen within the window."""
        at = self.seen_at(fp, now)
        return None if at is None else now - at
