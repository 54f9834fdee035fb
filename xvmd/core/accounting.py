"""The service's counters, and where every drop that left the reject path ends up.

The counters are what ``xvmd status`` and the periodic totals line show; the daemon reads them
as ``dict(stats.dropped)`` and ``dict(stats.served)``. Drop counters are keyed by
``DropReason``, a ``StrEnum``: they serialise as the plain reason strings.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from xvmd.core.droplog import KEPT, Drop
from xvmd.core.records import Recorder, RequestRecord
from xvmd.protocol.drops import DropReason
from xvmd.protocol.wire import FenceRequest

log = logging.getLogger("xvmd")


LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: upper bounds of the request duration histogram (status takes milliseconds, a
QEMU reboot seconds)."""


@dataclass
class Latency:
    """A histogram of answered requests' durations (pure; exported as Prometheus buckets)."""

    bounds: tuple[float, ...] = LATENCY_BOUNDS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    total: float = 0.0  # seconds, summed

    def observe(self, seconds: float) -> None:
        slot = next((i for i, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        self.counts[slot] += 1
        self.total += seconds

    def as_dict(self) -> dict[str, object]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}


@dataclass
class Stats:
    dropped: Counter[DropReason] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)  # by result label
    by_op: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, result) labels
    latency: Latency = field(default_factory=Latency)

    def drop(self, reason: DropReason) -> None:
        self.dropped[reason] += 1

    def answered(self, op: str, result: str, seconds: float) -> None:
        """A request answered with ``result`` after ``seconds``."""
        self.served[result] += 1
        self.by_op[op, result] += 1
        self.latency.observe(seconds)

    def by_op_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (op, result), n in sorted(self.by_op.items()):
            out.setdefault(op, {})[result] = n
        return out


class DropAccount:
    """One drop, one counter; plus the line its throttle allowed and, for some, a record."""

    def __init__(self, stats: Stats, records: Recorder) -> None:
        self.stats = stats
        self.records = records

    def dropped(self, drop: Drop, req: FenceRequest | None, who: str) -> None:
        if drop is KEPT:
            log.debug("copy of a pending request from %s kept as an alternate callback", who)
            return
        self.stats.drop(drop.reason)
        self.report(drop, req, who)

    def report(self, drop: Drop, req: FenceRequest | None, who: str) -> None:
        """The line and the refusal record of a drop (counted already, or never: ``overdue``)."""
        if drop.message is not None:
            log.log(drop.level, "%s", drop.message)
        if drop.record and req is not None:
            self.records.refusal(RequestRecord(who, req, drop.result, drop.detail))
