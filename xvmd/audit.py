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
import re
import stat
import threading
import time
from typing import Any

from .protocol.wire import Op

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


POWER_OPS = frozenset(op.label for op in Op if op.is_power_action)
_EPOCH = re.compile(rb'"epoch":([0-9.]+)')
_NOT_HANDLED = frozenset({"dropped"})  # refused before any connection was made


def handled_power_actions(
    path: str, since: float, max_bytes: int = 64 << 20, block: int = 1 << 20
) -> list[tuple[float, str, int, str]]:
    """``(epoch, op, seqno, target)`` of the power actions recorded since ``since`` that reached
    their client, oldest first: what replay protection must still know after a restart.

    Read backwards from the end, in blocks, at most ``max_bytes``; a missing, unreadable or
    non-regular file (a FIFO must not hang start-up) gives nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return []
    out: list[tuple[float, str, int, str]] = []
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return []
        pos, carry, budget = info.st_size, b"", max_bytes
        while pos > 0 and budget > 0:
            n = min(block, pos, budget)
            pos, budget = pos - n, budget - n
            lines = (os.pread(fd, n, pos) + carry).split(b"\n")
            carry = lines.pop(0) if pos > 0 else b""  # may be cut: finished by the next block
            if not _scan(reversed(lines), since, out):
                break
    except OSError:
        pass
    finally:
        os.close(fd)
    out.reverse()
    return out


def _scan(lines: Any, since: float, out: list[tuple[float, str, int, str]]) -> bool:
    """Collect handled power actions from ``lines`` (newest first); False once older than
    ``since`` (records are appended in time order)."""
    for line in lines:
        m = _EPOCH.search(line)
        if m is None:
            continue
        try:
            epoch = float(m.group(1))
        except ValueError:
            continue
        if epoch < since:
            return False
        if b'"op":"o' not in line and b'"op":"reboot"' not in line:
            continue  # cheap filter before parsing: most records are status and monitor
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("op") in POWER_OPS:
            if rec.get("result") in _NOT_HANDLED or not isinstance(rec.get("seqno"), int):
                continue
            out.append((epoch, str(rec["op"]), rec["seqno"], str(rec.get("target") or "")))
    return True
