"""The control socket: a unix stream socket, root's only (mode 0600), that answers a
connection with the daemon's status as one JSON document (``xvmd status`` reads it).

Rules:
1. Status is the default: a client that sends nothing (and closes its side, or waits
   ``REQUEST_WAIT``), or anything that is not a known command, gets the status document.
2. Commands are few and named: one JSON line ``{"command": NAME, ...}``, answered with one
   JSON document. Each is checked by the daemon, which knows who asks (the peer's uid).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from xvmd.daemon.paths import DEFAULT_CONTROL, check_control_path

__all__ = ["DEFAULT_CONTROL", "ControlError", "NotRunning", "Peer", "query", "serve"]

REQUEST_WAIT = 0.5  # seconds a client gets to send a command line before it gets the status
MAX_REQUEST = 4096  # bytes of a command line
COMMANDS = frozenset({"confirm-host-down"})


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a control connection (from the kernel, not the client)."""

    uid: int
    pid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"


Commands = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]


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


def _peer(w: asyncio.StreamWriter) -> Peer:
    sock = w.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return Peer(uid, pid)


async def _request(r: asyncio.StreamReader) -> dict[str, Any] | None:
    """The client's command, or None (nothing, or nothing we know: status)."""
    try:
        line = await asyncio.wait_for(r.readline(), REQUEST_WAIT)
    except (TimeoutError, ValueError, OSError):  # ValueError: a line beyond the limit
        return None
    if not line.strip() or len(line) > MAX_REQUEST:
        return None
    try:
        request = json.loads(line)
    except ValueError:
        return None
    if not isinstance(request, dict) or request.get("command") not in COMMANDS:
        return None
    return request


async def serve(
    path: str, status: Callable[[], dict[str, Any]], commands: Commands | None = None
) -> asyncio.Server:
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

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            request = await _request(r)
            if request is None or commands is None:
                answer = status()
            else:
                answer = await commands(request, _peer(w))
            w.write(json.dumps(answer, default=str).encode() + b"\n")
            await asyncio.wait_for(w.drain(), timeout=5)
        except (OSError, TimeoutError):
            pass
        finally:
            w.close()

    try:
        server = await asyncio.start_unix_server(handle, path, limit=MAX_REQUEST)
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    os.chmod(path, 0o600)  # who fenced what is for root's eyes
    return server


def query(path: str, timeout: float = 5.0, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask a running daemon for its status, or send it ``request`` (a command) and return the
    answer. Raises ControlError."""
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
        try:
            if request is not None:
                s.sendall(json.dumps(request).encode() + b"\n")
            s.shutdown(socket.SHUT_WR)  # nothing more: the daemon answers at once
        except OSError as exc:
            raise ControlError(f"cannot talk to xvmd at {path}: {exc.strerror or exc}") from None
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
