"""TCP: the connect-back to a client and the ``fence_virt -T`` listener, as asyncio protocols.

A ``Channel`` feeds received bytes straight into the pure ``ServerSession`` and writes what it
answers; its timers come from the session's deadlines. Callback-style protocols instead of
streams: streams cost a task per timed read, and this is the per-request hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

from xvmd.protocol.session import CONNECT_TIMEOUT, Phase, ServerSession


class CallbackFailed(Exception):
    """The client's listener could not be reached."""


class Channel(asyncio.Protocol):
    """One TCP connection: exact reads with deadlines, a session pump, bounded closing."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("?", 0)
        self._buffer = bytearray()
        self._want = 0
        self._waiter: asyncio.Future[bytes | None] | None = None
        self._session: ServerSession | None = None
        self._auth: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = self._loop.create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's, or uvloop's, which is no asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        session = self._session
        if session is not None:
            session.receive_data(data, self._loop.time())
            self._pump()
            return
        self._buffer += data
        self._satisfy()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._session is not None:
            self._session.connection_closed()
            self._pump()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- reading a request (the TCP listener) -------------------------------------------------

    async def read_exact(self, n: int, timeout: float) -> bytes | None:
        """``n`` bytes, or None when the peer closes or ``timeout`` passes first."""
        self._want = n
        self._waiter = self._loop.create_future()
        self._satisfy()
        handle = self._loop.call_later(timeout, self._expire_read)
        try:
            return await self._waiter
        finally:
            handle.cancel()

    def _satisfy(self) -> None:
        if self._waiter is not None and not self._waiter.done() and len(self._buffer) >= self._want:
            data = bytes(self._buffer[: self._want])
            del self._buffer[: self._want]
            self._waiter.set_result(data)

    def _expire_read(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the challenge-response -----------------------------------------------------------------

    async def authenticate(self, session: ServerSession) -> bool:
        """Run the session until it is authenticated (True) or has failed (False)."""
        self._session = session
        self._auth = self._loop.create_future()
        if self._buffer:  # bytes that arrived right behind a streamed request
            leftover, self._buffer = bytes(self._buffer), bytearray()
            session.receive_data(leftover, self._loop.time())
        if self.transport is None or self.transport.is_closing():
            session.connection_closed()
        self._pump()
        return await self._auth

    def _pump(self) -> None:
        session, transport = self._session, self.transport
        if session is None or transport is None:
            return
        out = session.data_to_send()
        if out and not transport.is_closing():
            transport.write(out)
        self._cancel_timer()
        if session.phase in (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE):
            if session.deadline is not None:
                self._timer = self._loop.call_at(session.deadline, self._expire_session)
            return
        if self._auth is not None and not self._auth.done():
            self._auth.set_result(session.phase is Phase.AUTHENTICATED)

    def _expire_session(self) -> None:
        if self._session is not None:
            self._session.handle_timer(self._loop.time())
            self._pump()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the answer and the end -----------------------------------------------------------------

    async def finish(self, session: ServerSession | None, timeout: float) -> None:
        """Write what the session still has to say and close; a reader that stalls (never
        takes the hostlist off the wire) is cut off after ``timeout``."""
        transport = self.transport
        if transport is None:
            return
        out = session.data_to_send() if session is not None else b""
        if out and not transport.is_closing():
            transport.write(out)
        transport.close()  # sends what is buffered, then closes
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        except TimeoutError:
            transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect_back(address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Channel:
    """Open the TCP connection to the address and port a request named.

    Raises:
        CallbackFailed: refused, unreachable or not accepted within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    target = (address, port) if ip.version == 4 else (address, port, 0, 0)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, target)
        _, channel = await loop.create_connection(Channel, sock=sock)
    except TimeoutError:
        sock.close()
        raise CallbackFailed(f"no answer within {timeout:g}s") from None
    except OSError as exc:
        sock.close()
        raise CallbackFailed(exc.strerror or str(exc)) from None
    return channel


async def start_listener(
    host: str, port: int, on_connection: Callable[[Channel], Coroutine[Any, Any, None]]
) -> asyncio.Server:
    """The listener ``fence_virt -T`` talks to. Raises OSError when the port is taken."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def factory() -> Channel:
        channel = Channel()

        def start() -> None:
            task = loop.create_task(on_connection(channel))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.call_soon(start)
        return channel

    return await loop.create_server(factory, host, port, reuse_address=True)
