"""The audit trail: one JSON line per request that reached an action or a refusal.

Rules:
1. Append-only (O_APPEND), mode 0600, one line per record, never rewritten (only a record
   that failed part-way is cut back off the end).
2. A power action's record is flushed and fsynced *before* its result byte is sent, so a
   client that heard "done" implies a record on disk, even if xvmd is killed the next instant.
3. fsyncs run in a worker thread: a slow disk delays that one answer, not the event loop.
4. Whole records or a reported failure: a short write is continued, a write that fails
   part-way is cut back off the file, and if even that fails the next record starts on a new
   line. A failed write never stops the answer: it is logged, counted and shown in status.
5. The path is followed: renamed or deleted (logrotate), the next record reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import stat
import threading
import time
from typing import Any, NoReturn

from ccs.source import describe
from xvmd.protocol.history import History, key_of
from xvmd.protocol.wire import Op

log = logging.getLogger("xvmd.audit")

_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_TAIL_SCAN = 1 << 20  # how far back a torn last record is measured


class AuditError(Exception):
    """The audit file cannot be opened."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the bare cause, for status


def _open(path: str) -> int:
    """An append descriptor on the regular file ``path``, created 0600 if missing. Never blocks
    (O_NONBLOCK: a FIFO), never truncates; anything but a regular file is refused."""
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            try:
                kind = describe(os.stat(path).st_mode)
            except OSError:
                kind = "not a regular file"
            _refuse(path, kind)
        reason = exc.strerror or str(exc)
        raise AuditError(f"audit file {path}: {reason}", reason) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        reason = exc.strerror or str(exc)
        raise AuditError(f"audit file {path}: {reason}", reason) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        _refuse(path, describe(mode))
    return fd


def _refuse(path: str, kind: str) -> NoReturn:
    reason = f"{kind}, not a regular file"
    raise AuditError(f"audit file {path} is {reason}", reason)


def _sync_dir(path: str) -> None:
    """Make a newly created file's directory entry durable (best effort)."""
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _incomplete_tail(fd: int) -> int:
    """Bytes after the last newline: a record cut by a crash (0 if the file ends cleanly)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    n = min(size, _TAIL_SCAN)
    chunk = os.pread(fd, n, size - n)
    return len(chunk) - chunk.rfind(b"\n") - 1


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # held across the I/O of one record
        self._stats = threading.Lock()  # held only to update or copy the counters below
        self.written = 0
        self.failures = 0
        self.last_failure: str | None = None
        self.last_failure_epoch: float | None = None
        self.reopened = 0
        self.torn_tail: str | None = None  # the start-up repair, for status
        self._torn = False  # a partial record could not be removed: start the next on a new line
        self._closed = False
        self._fd = _open(path)
        self._dir_unsynced = True
        self._close_off_tail()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, record: dict[str, Any], durable: bool) -> None:
        """Append one whole record (blocking); ``durable`` fsyncs it before returning.
        Never raises: a failure is logged and counted, and the answer goes out regardless."""
        line = json.dumps(record, separators=(",", ":"), sort_keys=True, default=str) + "\n"
        data = line.encode()
        with self._lock:
            if self._closed:
                self._failed("cannot write the audit record to", "the audit trail is closed")
                return
            self._follow()
            try:
                self._append(data)
                if durable:
                    os.fsync(self._fd)
                    self._sync_new_dir()
            except OSError as exc:
                self._failed("cannot write the audit record to", exc.strerror or str(exc))
            else:
                with self._stats:
                    self.written += 1

    async def record(self, record: dict[str, Any], durable: bool) -> None:
        """Durable records are fsynced in a worker thread; the others are one short append
        to the page cache, done inline (a thread hand-off would cost more than the write)."""
        if durable:
            await asyncio.get_running_loop().run_in_executor(None, self.write, record, True)
        else:
            self.write(record, False)

    def _append(self, data: bytes) -> None:
        """All of ``data`` or nothing: os.write may stop short (a nearly full disk)."""
        if self._torn:
            data = b"\n" + data
        start = os.fstat(self._fd).st_size  # the only writer, under the lock
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                n = os.write(self._fd, view[done:])
                if n <= 0:
                    raise OSError(errno.EIO, "the write made no progress")
                done += n
        except OSError:
            if done:
                self._cut_back(start, done)
            raise
        self._torn = False

    def _cut_back(self, start: int, done: int) -> None:
        """Remove the ``done`` bytes of a record that could not be finished."""
        try:
            os.ftruncate(self._fd, start)
        except OSError as exc:
            self._torn = True
            log.error(
                "cannot remove %d bytes of a partial audit record from %s: %s; "
                "the next record starts on a new line",
                done,
                self.path,
                exc.strerror or exc,
            )

    def _sync_new_dir(self) -> None:
        if self._dir_unsynced:
            _sync_dir(self.path)
            self._dir_unsynced = False

    def _failed(self, what: str, reason: str) -> None:
        with self._stats:
            self.failures += 1
            self.last_failure = reason
            self.last_failure_epoch = time.time()
        log.error("%s %s: %s", what, self.path, reason)

    # -- the file behind the path ----------------------------------------------------------------

    def _close_off_tail(self) -> None:
        """A previous run killed mid-write left a record without its newline: end it, so the
        next record is not glued to it. The cut record stays (``xvmd audit`` skips it)."""
        try:
            cut = _incomplete_tail(self._fd)
        except OSError as exc:
            log.warning("cannot check the end of the audit trail %s: %s", self.path, exc.strerror)
            return
        if not cut:
            return
        with self._stats:
            self.torn_tail = f"an incomplete last record of {cut} bytes, closed off with a newline"
        log.warning(
            "audit trail %s ends in an incomplete record of %d bytes (a previous run stopped "
            "mid-write); closed it off with a newline, 'xvmd audit' skips it",
            self.path,
            cut,
        )
        try:
            self._append(b"\n")
        except OSError as exc:
            self._torn = True
            self._failed("cannot close off the incomplete record in", exc.strerror or str(exc))

    def _moved(self) -> bool:
        """Whether the path no longer names the open file (renamed, deleted or replaced)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        mine = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def _follow(self) -> None:
        """Reopen the path if it moved; on failure keep writing to the old file and retry with
        the next record."""
        try:
            if not self._moved():
                return
            fd = _open(self.path)
        except AuditError as exc:
            self._failed("cannot reopen the audit trail", f"reopen: {exc.reason}")
            return
        except OSError as exc:
            self._failed("cannot reopen the audit trail", f"reopen: {exc.strerror or exc}")
            return
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd, self._torn, self._dir_unsynced = fd, False, True
        with self._stats:
            self.reopened += 1
        log.info("audit trail reopened (rotated?): %s", self.path)
        self._close_off_tail()

    def reopen(self) -> None:
        """Reopen the path if it no longer names the open file: SIGHUP after logrotate. Never
        waits behind a write in progress (an fsync may take seconds): the next record checks."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if not self._closed:
                self._follow()
        finally:
            self._lock.release()

    def status(self) -> dict[str, Any]:
        """For ``xvmd status``: never waits behind a write (an fsync may take seconds)."""
        with self._stats:
            return {
                "path": self.path,
                "written": self.written,
                "failures": self.failures,
                "last_failure": self.last_failure,
                "last_failure_epoch": self.last_failure_epoch,
                "reopened": self.reopened,
                "torn_tail": self.torn_tail,
            }

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)


POWER_OPS = frozenset(op.label for op in Op if op.is_power_action)
_EPOCH = re.compile(rb'"epoch":([0-9.]+)[,}]')  # the terminator: a torn epoch is no epoch
_NOT_HANDLED = frozenset({"dropped"})  # refused before any connection was made


def handled_power_actions(
    path: str, since: float, max_bytes: int = 64 << 20, block: int = 1 << 20
) -> list[tuple[float, str, int, str]]:
    """``(epoch, op, seqno, target)`` of the power actions recorded since ``since`` that reached
    their client, oldest first: what replay protection must still know after a restart.

    Read backwards from the end, in blocks, at most ``max_bytes``; a missing, unreadable or
    non-regular file (a FIFO must not hang start-up) gives nothing, an unparseable line (a record
    torn by a crash or a full disk) is skipped. If ``path`` holds nothing older than ``since``,
    the file logrotate just renamed (``PATH.1``, left uncompressed by delaycompress) is read too.
    """
    out: list[tuple[float, str, int, str]] = []
    budget = max_bytes
    for name in (path, path + ROTATED_SUFFIX):
        reached, budget = _read_back(name, since, budget, block, out)
        if reached or budget <= 0:
            break
    out.reverse()
    return out


ROTATED_SUFFIX = ".1"  # logrotate's name for the previous file (contrib/logrotate/xvmd)


def _read_back(
    path: str, since: float, budget: int, block: int, out: list[tuple[float, str, int, str]]
) -> tuple[bool, int]:
    """Scan ``path`` newest first into ``out``: (whether a record older than ``since`` was
    reached, the byte budget left)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False, budget
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False, budget
        pos, carry = info.st_size, b""
        while pos > 0 and budget > 0:
            n = min(block, pos, budget)
            pos, budget = pos - n, budget - n
            lines = (os.pread(fd, n, pos) + carry).split(b"\n")
            carry = lines.pop(0) if pos > 0 else b""  # may be cut: finished by the next block
            if not _scan(reversed(lines), since, out):
                return True, budget
    except OSError:
        pass
    finally:
        os.close(fd)
    return False, budget


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


def restore_replay_memory(history: History, path: str, now: float) -> None:
    """Power actions handled within the last hour stay refused as replays across a restart
    (``now``: the history's clock)."""
    wall = time.time()
    ops = {op.label: op for op in Op}
    found = handled_power_actions(path, wall - history.done_window)
    for epoch, label, seqno, target in found:
        history.remember_done(key_of(ops[label], seqno, target), now - (wall - epoch))
    if found:
        log.info(
            "replay protection: %d power actions of the last hour read from %s (and %s%s)",
            len(found),
            path,
            path,
            ROTATED_SUFFIX,
        )
