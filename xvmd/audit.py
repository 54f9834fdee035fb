"""The audit trail: one JSON line per request that reached an action or a refusal.

Rules:
1. Append-only (O_APPEND), mode 0600, one line per record, never rewritten.
2. A power action's record is flushed and fsynced *before* its result byte is sent, so a
   client that heard "done" implies a record on disk, even if xvmd is killed the next instant.
3. fsyncs run in a worker thread: a slow disk delays that one answer, not the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger("xvmd.audit")

DEFAULT_AUDIT = "/var/lib/xvmd/audit.jsonl"


class AuditError(Exception):
    """The audit file cannot be opened."""


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditError(f"audit file {path}: {exc.strerror or exc}") from None
        self._lock = threading.Lock()
        self.failures = 0

    def write(self, record: dict[str, Any], durable: bool) -> None:
        """Append one record (blocking); ``durable`` fsyncs it before returning."""
        line = json.dumps(record, separators=(",", ":"), sort_keys=True, default=str) + "\n"
        data = line.encode()
        with self._lock:
            try:
                os.write(self._fd, data)
                if durable:
                    os.fsync(self._fd)
            except OSError as exc:
                self.failures += 1
                log.error("cannot write the audit record to %s: %s", self.path, exc)

    async def record(self, record: dict[str, Any], durable: bool) -> None:
        """Durable records are fsynced in a worker thread; the others are one short append
        to the page cache, done inline (a thread hand-off would cost more than the write)."""
        if durable:
            await asyncio.get_running_loop().run_in_executor(None, self.write, record, True)
        else:
            self.write(record, False)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def now_fields() -> dict[str, Any]:
    t = time.time()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
        "epoch": round(t, 3),
    }
