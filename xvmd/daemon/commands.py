"""What the control socket's commands do: each checked, logged and written to the audit trail
with who asked (the peer's uid from the kernel) and what became of it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from xvmd.core.records import now_fields
from xvmd.daemon.audit import AuditLog
from xvmd.daemon.control import Peer

if TYPE_CHECKING:
    from xvmd.daemon.grouping import GroupRuntime

log = logging.getLogger("xvmd")


async def run(
    request: dict[str, Any], peer: Peer, group: GroupRuntime | None, audit: AuditLog | None
) -> dict[str, Any]:
    """``confirm-host-down HOST``: the only command so far (control.COMMANDS)."""
    host = str(request.get("host", ""))
    if group is None:
        answer: dict[str, Any] = {
            "ok": False,
            "error": "this daemon answers for its own host only (--local, --no-ccs or no "
            "cluster.conf): there is no other host to confirm down",
        }
    else:
        answer = await group.confirm_down(host, peer.user)
    log.log(
        logging.WARNING if answer["ok"] else logging.INFO,
        "confirm-host-down %s by %s (uid %d): %s",
        host,
        peer.user,
        peer.uid,
        answer.get("detail") or answer.get("error"),
    )
    if audit is not None:
        record = {
            **now_fields(),
            "requester": f"{peer.user} (uid {peer.uid}, pid {peer.pid})",
            "op": "confirm-host-down",
            "target": host,
            "result": "accepted" if answer["ok"] else "refused",
            "detail": answer.get("detail") or answer.get("error"),
        }
        await audit.record(record, durable=True)
    return answer
