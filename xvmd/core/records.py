"""What xvmd keeps of each request: the recent list of ``xvmd status``, the audit trail record
and the one log line, all built from the same fields.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from xvmd.daemon.audit import AuditLog, now_fields
from xvmd.protocol.wire import FenceRequest, Op, Result
from xvmd.quorum import QuorumStatus

reqlog = logging.getLogger("xvmd.request")

RECENT = 100  # requests kept for `xvmd status`


class Recorder:
    def __init__(
        self, audit: AuditLog | None, quorum: Callable[[], QuorumStatus] | None = None
    ) -> None:
        self.audit = audit
        self._quorum = quorum  # None: --local, quorum not checked
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._background: set[asyncio.Task[None]] = set()

    def entry(
        self,
        who: str,
        req: FenceRequest,
        result: str,
        detail: str,
        *,
        device: str | None = None,
        ms: float = 0.0,
        domain: str = "",
    ) -> dict[str, Any]:
        """The record of one request, kept for ``xvmd status``; the audit trail gets the same."""
        quorum = self._quorum() if self._quorum else None
        entry: dict[str, Any] = {
            **now_fields(),
            "requester": who,
            "device": device,
            "op": req.op.label,
            "target": req.domain,
            "domain": domain or None,
            "seqno": req.seqno,
            "quorum": "not checked"
            if quorum is None
            else ("quorate" if quorum.quorate else f"not quorate: {quorum.reason}"),
            "result": result,
            "detail": detail,
            "ms": round(ms, 1),
        }
        self.recent.append(entry)
        return entry

    def refusal(
        self, who: str, req: FenceRequest, result: str, detail: str, device: str | None = None
    ) -> None:
        """A request refused outside an answer: recorded, written in the background, not fsynced."""
        entry = self.entry(who, req, result, detail, device=device)
        if self.audit is not None:
            task = asyncio.create_task(self.audit.record(entry, durable=False))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def answered(self, entry: dict[str, Any], req: FenceRequest) -> None:
        """Before the result byte leaves: whoever heard "done" can find the record."""
        if self.audit is not None:
            await self.audit.record(entry, durable=req.op.is_power_action)


def log_request(
    req: FenceRequest,
    who: str,
    device: str | None,
    result: Result,
    elapsed: float,
    detail: str,
    domain: str,
) -> None:
    """The one line per answered request: requester, op, target, result, milliseconds."""
    mapped = f" (domain {domain})" if domain else ""
    if device is not None:
        who = f"{who} [{device}]"
    failed = result is Result.FAIL and req.op is not Op.NULL  # null always 'fails'
    level = logging.WARNING if failed or result is Result.PERM else logging.INFO
    reqlog.log(
        level,
        "%s %s %s%s -> %s in %.0f ms: %s",
        who,
        req.op.label,
        req.shown_target,
        mapped,
        result.label,
        elapsed,
        detail,
    )
