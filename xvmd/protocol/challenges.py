"""Challenges this daemon issued, so that none of them is ever answered back to a client.

The client challenges first, and the daemon answers ``H(key || C1)`` for any 64 bytes it is
sent. With two sessions open, an attacker holding no key could send the daemon's own challenge
C2 of session A as C1 on session B, read the daemon's answer, and present it on A (a reflection
attack). fence_virtd escapes this only by serving one session at a time; xvmd serves many, so it
refuses any client challenge equal to one it issued.

Rules for this module:
1. No I/O; the clock is an argument.
2. The challenge of a session still waiting for its answer is never forgotten, whatever the
   load: eviction must not reopen the attack. Live sessions are bounded by the daemon's session
   quotas, so this set is too.
3. A finished session's challenge is kept ``window`` seconds more (at most ``max_retired``), so a
   late attempt is still recognised and reported as an attack.
"""

from __future__ import annotations

from collections import OrderedDict

RETIRED_WINDOW = 60.0
MAX_RETIRED = 4096


class IssuedChallenges:
    def __init__(self, window: float = RETIRED_WINDOW, max_retired: int = MAX_RETIRED) -> None:
        self.window = window
        self.max_retired = max_retired
        self._live: set[bytes] = set()
        self._retired: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live) + len(self._retired)

    def issue(self, challenge: bytes) -> None:
        """A session sent ``challenge`` and now waits for its answer."""
        self._live.add(challenge)

    def retire(self, challenge: bytes, now: float) -> None:
        """The session that sent ``challenge`` is over (authenticated, failed or closed)."""
        if challenge not in self._live:
            return
        self._live.discard(challenge)
        self._retired[challenge] = now + self.window
        self._retired.move_to_end(challenge)
        while len(self._retired) > self.max_retired:
            self._retired.popitem(last=False)

    def issued(self, challenge: bytes, now: float) -> bool:
        """True when ``challenge`` is one this daemon sent to some client recently."""
        retired = self._retired
        while retired:
            oldest, until = next(iter(retired.items()))
            if until > now:
                break
            del retired[oldest]
        return challenge in self._live or challenge in retired
