"""The control socket: a unix stream socket that answers every connection with the daemon's
status as one JSON document (``xvmd status`` reads it). Read-only by design: it changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from xvmd.daemon.paths import DEFAULT_CONTROL, check_control_path

__all__ = ["DEFAULT_CONTROL", "ControlError", "NotRunning", "query", "serve"]


class ControlError(Exception):
    """The control socket cannot be used; the message says why."""


class NotRunning(ControlError):
    """No daemon listens there: no socket, or a stale one."""


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


async def serve(path: str, status: Callable[[], dict[str, Any]]) -> asyncio.Server:
    """Listen on ``path``. Raises ControlError when another daemon answers there, or when
    something other than a socket is there (never removed: it is someone's file)."""
    problem = check_control_path(path)
    if problem is not None:
        raise ControlError(problem)
    with contextlib.suppress(FileNotFoundError):
        # Checked again right before the unlink: only ever remove a socket.
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            if _answers(path):
                raise ControlError(f"another xvmd is running: its control socket {path} answers")
            os.unlink(path)  # stale, from a daemon that was killed
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(json.dumps(status(), default=str).encode() + b"\n")
            await asyncio.wait_for(w.drain(), timeout=5)
        except (OSError, TimeoutError):
            pass
        finally:
            w.close()

    try:
        server = await asyncio.start_unix_server(handle, path)
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    os.chmod(path, 0o600)  # who fenced what is for root's eyes
    return server


def query(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a running daemon. Raises ControlError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise NotRunning(f"xvmd is not running (no control socket at {path})") from None
        except ConnectionRefusedError:
            raise NotRunning(f"xvmd is not running (stale control socket {path})") from None
        except OSError as exc:
            raise ControlError(f"cannot reach xvmd at {path}: {exc.strerror or exc}") from None
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                raise ControlError(f"xvmd at {path} did not answer in {timeout:g}s") from None
            if not data:
                break
            chunks.append(data)
    try:
        doc = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"unreadable answer from {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ControlError(f"unexpected answer from {path}")
    return doc
