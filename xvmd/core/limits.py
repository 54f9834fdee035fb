"""Bounds on what any sender can make the daemon hold or write: quotas and quiet logging.

Rules:
1. Pure: no I/O, the clock is an argument. The service asks; these only count.
2. Everything is bounded in memory, whatever the sender does.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Session quotas: multicast callbacks and TCP listener clients never share a budget."""

    max_sessions: int = 128  # connect-back sessions in all
    per_callback: int = 4  # ... to one callback address and port (a stock client takes one)
    max_stream: int = 32  # TCP listener clients in all
    per_peer: int = 4  # ... from one peer address (an IPv6 /64 counts as one)


DEFAULT_LIMITS = Limits()


class Full(enum.Enum):
    """Why a Quota gave no ticket."""

    TOTAL = "full"  # every place is taken
    KEY = "key-full"  # every place this key may hold is taken


class Quota:
    """At most ``total`` holders at once, and at most ``per_key`` of them with one key.

    A key is whatever one sender cannot multiply: a TCP peer address, or a callback address
    and port (where a stock client accepts exactly one connection).
    """

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self._held: Counter[Hashable] = Counter()
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    def take(self, key: Hashable) -> Ticket | Full:
        """A ticket to give back when done; otherwise why not."""
        if self._used >= self.total:
            return Full.TOTAL
        if self._held[key] >= self.per_key:
            return Full.KEY
        self._held[key] += 1
        self._used += 1
        return Ticket(self, key)

    def _give_back(self, key: Hashable) -> None:
        count = self._held.get(key, 0)
        if count <= 0:
            return
        self._used -= 1
        if count == 1:
            del self._held[key]
        else:
            self._held[key] = count - 1

    def holding(self, key: Hashable) -> int:
        return self._held.get(key, 0)


class Ticket:
    """One place held in a Quota; ``release`` may be called any number of times."""

    __slots__ = ("_key", "_quota")

    def __init__(self, quota: Quota, key: Hashable) -> None:
        self._quota: Quota | None = quota
        self._key = key

    def release(self) -> None:
        if self._quota is not None:
            self._quota._give_back(self._key)
            self._quota = None


@dataclass(slots=True)
class _Quiet:
    last: float
    quiet: int = 0


class Throttle:
    """The first event of each key is reported; repeats within ``interval`` are only counted and
    reported as one summary (by the next report, or by ``due``). A flood of one kind then costs
    one log line per interval, and journald's rate limit never swallows the lines that matter.
    """

    def __init__(self, interval: float = 60.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, _Quiet] = OrderedDict()

    @property
    def remembered(self) -> tuple[Hashable, ...]:
        """The keys it keeps a record of, least recently reported first (bounded by max_keys)."""
        return tuple(self._keys)

    def hit(self, key: Hashable, now: float) -> int | None:
        """None: stay quiet. A number: report now; it is how many were kept quiet before."""
        entry = self._keys.get(key)
        if entry is None:
            self._keys[key] = _Quiet(now)
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return 0
        if now - entry.last < self.interval:
            entry.quiet += 1
            return None
        quiet, entry.last, entry.quiet = entry.quiet, now, 0
        self._keys.move_to_end(key)
        return quiet

    def due(self, now: float) -> list[tuple[Hashable, int]]:
        """Summaries owed: keys with quiet repeats whose interval has passed. Keys that stayed
        silent for a whole interval are forgotten, so their next event is reported at once."""
        out: list[tuple[Hashable, int]] = []
        for key, entry in list(self._keys.items()):
            if now - entry.last < self.interval:
                continue
            if entry.quiet:
                out.append((key, entry.quiet))
                entry.last, entry.quiet = now, 0
            else:
                del self._keys[key]
        return out
