"""Replay protection for power actions: the exact bytes of a signed packet count once per hour.

The stock client draws a fresh seqno for every run and fresh ``random`` bytes for every packet
it signs, retransmits included (fence-agents ``client/mcast.c``: seqno from ``tv_usec`` once per
run; ``sign_request`` fills ``random`` per packet). So the exact bytes of an honest signed request
never arrive twice: a second arrival is a network duplicate (within seconds) or a replay by
whoever captured the packet. This catches a captured packet that was never acted on (it arrived
while the host was not quorate, or its callback failed); ``history.py`` remembers the requests
that were acted on, whichever copy is replayed.

Rules for this module:
1. No I/O; the clock is an argument.
2. Only signed power actions are kept (unsigned packets carry no random bytes, so an honest
   client's retransmits are identical). Nobody without a key can add an entry.
3. Memory is bounded: ``max_entries`` fingerprints, the oldest going first. ``remember`` is
   called with times that never go backwards.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

REPLAY_WINDOW = 3600.0
"""Seconds during which the exact bytes of a power request are never acted on again."""
MAX_ENTRIES = 16384


def fingerprint(raw: bytes) -> bytes:
    """16 bytes naming one exact packet; safe to write down (reveals nothing of the packet)."""
    return hashlib.sha256(raw).digest()[:16]


class ReplayGuard:
    def __init__(self, window: float = REPLAY_WINDOW, max_entries: int = MAX_ENTRIES) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def age(self, fp: bytes, now: float) -> float | None:
        """Seconds since ``fp`` was first seen, or None when it was not seen within the window."""
        self._purge(now)
        at = self._seen.get(fp)
        return None if at is None else now - at

    def remember(self, fp: bytes, at: float) -> None:
        """Record ``fp`` as seen at ``at``."""
        if fp in self._seen:
            return
        self._seen[fp] = at
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _purge(self, now: float) -> None:
        seen, limit = self._seen, now - self.window
        while seen:
            oldest, at = next(iter(seen.items()))
            if at > limit:
                break
            del seen[oldest]
