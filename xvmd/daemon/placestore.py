"""Where every cluster VM was last seen, kept on disk: after a restart of xvmd, or of the whole
host cluster, a VM last seen on a host that never came back is still "last on that host", never
"unknown".

Rules:
1. Atomic: written to a temporary file beside the target, fsynced, renamed over it, and the
   directory fsynced; a crash leaves the old file or the new one, never a torn one.
2. Off the event loop: every read and write runs in a daemon thread of its own (a hung disk
   must neither stall requests nor hold up the exit).
3. A file that cannot be used is never thrown away: it is renamed aside (``.bad``) with a log
   line, and the daemon starts with an empty memory (answers only fail more, never less).
4. Saved at most once per ``SAVE_INTERVAL`` seconds, and only after a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from xvmd.daemon.reloader import in_daemon_thread
from xvmd.hosts.table import Table

log = logging.getLogger("xvmd.hosts")

VERSION = 1
SAVE_INTERVAL = 1.0
MAX_FILE = 64 << 20  # bytes: far beyond MAX_REMEMBERED entries


class StoreError(Exception):
    """The placement file cannot be used; the message names it and says why."""


def save(path: str, memory: dict[str, Any]) -> None:
    """Write ``memory`` to ``path`` atomically (blocking)."""
    data = json.dumps({"version": VERSION, **memory}, separators=(",", ":")).encode()
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: str) -> dict[str, Any] | None:
    """The memory kept in ``path``; None when there is none yet. Raises StoreError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise StoreError(f"{path} is larger than {MAX_FILE} bytes")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise StoreError(f"{path}: not a placement file of version {VERSION}")
    return doc


def _set_aside(path: str) -> str:
    aside = f"{path}.bad"
    os.replace(path, aside)
    return aside


class PlacementStore:
    def __init__(self, path: str, table: Table) -> None:
        self.path = path
        self.table = table
        self.saved_version = -1
        self.failures = 0
        self.last_error: str | None = None

    async def restore(self) -> None:
        """Read the memory back into the (empty) table; never raises."""
        try:
            memory = await in_daemon_thread(load, self.path)
            if memory is not None:
                self.table.restore(memory)
                log.info(
                    "placements of %d VMs read back from %s", len(memory["active_at"]), self.path
                )
        except (StoreError, ValueError) as exc:
            aside = None
            with contextlib.suppress(OSError):
                aside = await in_daemon_thread(_set_aside, self.path)
            log.error("%s; starting without it%s", exc, f" (kept as {aside})" if aside else "")
        self.saved_version = self.table.version

    async def run(self) -> None:
        """Save after every change, at most once per SAVE_INTERVAL, until cancelled."""
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            await self.save_now()

    async def save_now(self) -> None:
        version = self.table.version
        if version == self.saved_version:
            return
        try:
            await in_daemon_thread(save, self.path, self.table.memory())
        except OSError as exc:
            self.failures += 1
            self.last_error = f"cannot write {self.path}: {exc.strerror or exc}"
            if self.failures == 1:
                log.error(
                    "%s (placements kept in memory only until it works again)", self.last_error
                )
            return
        if self.failures:
            log.info("placements written to %s again", self.path)
        self.failures, self.last_error = 0, None
        self.saved_version = version
