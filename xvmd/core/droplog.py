"""What a dropped request leaves behind: its reason, and a log line only when one is news.

Rules:
1. Pure: the clock is an argument; callers log the lines and count the reasons.
2. A flood of one kind costs one line per interval, with a count of the rest, so an attacker
   can neither fill the disk nor push the lines that matter past journald's rate limit.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass

from xvmd.core.limits import Throttle
from xvmd.protocol.drops import DropReason
from xvmd.protocol.history import request_key
from xvmd.protocol.wire import FenceRequest

FLOOD_INTERVAL = 60.0
"""Seconds between two log lines about the same kind of drop from the same source: a flood of
one kind costs one line a minute (with a count), well under journald's default rate limit, so
the lines that matter are never swallowed."""
THROTTLED_SOURCES = 1024
"""(reason, source) pairs whose quiet repeats are counted: bounds memory under a flood from
many spoofed sources. The oldest is forgotten first; its next drop is logged once more."""
PER_REQUEST_INTERVAL = 10.0
"""Seconds between two log lines (and refusal records) about the same request: the stock
client retransmits every 2 s until its timeout, and one line per request is news while five
are noise (five audit records each, under a replay flood, would fill the disk)."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Not served. ``message`` is None when nothing should be logged beyond debug level."""

    reason: DropReason
    message: str | None = None
    level: int = logging.DEBUG
    detail: str = ""  # with ``record``: why, for `xvmd status` and the audit trail
    record: bool = False
    result: str = "dropped"  # the result recorded (auth failures: after a connection)


KEPT = Drop(DropReason.ALTERNATE)  # a copy kept for a retry of the callback: not counted


class DropLines:
    """The two throttles: per (reason, source) for floods, per request for retransmits."""

    def __init__(self) -> None:
        self.per_source = Throttle(FLOOD_INTERVAL, THROTTLED_SOURCES)
        self.per_request = Throttle(PER_REQUEST_INTERVAL)

    def quiet(
        self,
        reason: DropReason,
        source: Hashable,
        now: float,
        why: str,
        level: int = logging.WARNING,
    ) -> Drop:
        """Logged once per FLOOD_INTERVAL for ``reason`` from ``source``, with a count."""
        n = self.per_source.hit((reason, source), now)
        if n is None:
            return Drop(reason)
        more = f" ({n} more since the last report)" if n else ""
        return Drop(reason, why + more, level)

    def per_callback(self, callback: tuple[str, int], now: float, text: str) -> str | None:
        """A failed connect-back's line, once per FLOOD_INTERVAL per address and port."""
        n = self.per_source.hit((DropReason.CALLBACK_FAILED, callback), now)
        if n is None:
            return None
        more = f" ({n} more failures since the last report)" if n else ""
        return text + more

    def once_per_request(self, req: FenceRequest, now: float, reason: DropReason, why: str) -> Drop:
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
