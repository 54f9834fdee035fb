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


@dataclass
class Stats:
    dropped: Counter[DropReason] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)  # by result label

    def drop(self, reason: DropReason) -> None:
        self.dropped[reason] += 1


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
