"""What xvmd keeps of each request: the recent list of ``xvmd status``, the audit trail record
and the one log line, all built from the same fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xvmd.protocol.wire import FenceRequest, Op, Result
from xvmd.quorum import QuorumStatus

reqlog = logging.getLogger("xvmd.request")

RECENT = 100  # requests kept for `xvmd status`


class Trail(Protocol):
    """Where records are written for good (``xvmd.daemon.audit.AuditLog``)."""

    async def record(self, record: dict[str, Any], durable: bool) -> None: ...


def now_fields() -> dict[str, Any]:
    """When a record was made, for people (UTC, milliseconds) and for programs (epoch)."""
    t = time.time()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
        "epoch": round(t, 3),
    }


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request's outcome: what ``xvmd status``, the audit trail and the log line show."""

    who: str  # the requester: callback address or TCP peer
    req: FenceRequest
    # The result byte sent, or what became of a request that got none ("dropped", "unknown").
    result: Result | str
    detail: str
    device: str | None = None  # the device whose scope applied (cluster mode)
    ms: float = 0.0
    domain: str = ""  # the libvirt domain the target mapped to, when it differs

    @property
    def label(self) -> str:
        return self.result.label if isinstance(self.result, Result) else self.result


class Recorder:
    def __init__(
        self, audit: Trail | None, quorum: Callable[[], QuorumStatus] | None = None
    ) -> None:
        self.audit = audit
        self._quorum = quorum  # None: --local, quorum not checked
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._background: set[asyncio.Task[None]] = set()

    def keep(self, record: RequestRecord) -> dict[str, Any]:
        """The record of one request, kept for ``xvmd status``; the audit trail gets the same."""
        req = record.req
        entry: dict[str, Any] = {
            **now_fields(),
            "requester": record.who,
            "device": record.device,
            "op": req.op.label,
            "target": req.domain,
            "domain": record.domain or None,
            "seqno": req.seqno,
            "quorum": self._quorum_when_recorded(),
            "result": record.label,
            "detail": record.detail,
            "ms": round(record.ms, 1),
        }
        self.recent.append(entry)
        return entry

    def _quorum_when_recorded(self) -> str:
        """Quorum as the outcome is recorded (read, not gated: the gates are in intake and
        pipeline): whoever reads the trail later can tell a quorate host's acts from others."""
        quorum = self._quorum() if self._quorum else None
        if quorum is None:
            return "not checked"
        return "quorate" if quorum.quorate else f"not quorate: {quorum.reason}"

    def refusal(self, record: RequestRecord) -> None:
        """A request refused outside an answer: recorded, written in the background, not fsynced."""
        entry = self.keep(record)
        if self.audit is not None:
            task = asyncio.create_task(self.audit.record(entry, durable=False))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def answered(self, record: RequestRecord) -> None:
        """Before the result byte leaves: whoever heard "done" can find the record."""
        entry = self.keep(record)
        if self.audit is not None:
            await self.audit.record(entry, durable=record.req.op.is_power_action)


def log_request(record: RequestRecord) -> None:
    """The one line per answered request: requester, op, target, result, milliseconds."""
    req, who = record.req, record.who
    mapped = f" (domain {record.domain})" if record.domain else ""
    if record.device is not None:
        who = f"{who} [{record.device}]"
    failed = record.result is Result.FAIL and req.op is not Op.NULL  # null always 'fails'
    level = logging.WARNING if failed or record.result is Result.PERM else logging.INFO
    reqlog.log(
        level,
        "%s %s %s%s -> %s in %.0f ms: %s",
        who,
        req.op.label,
        req.shown_target,
        mapped,
        record.label,
        record.ms,
        record.detail,
    )
