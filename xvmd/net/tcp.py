"""TCP: the connect-back to a client, pumping a ``ServerSession``, and the stream listener."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from ..protocol.session import CONNECT_TIMEOUT, Phase, ServerSession

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class CallbackFailed(Exception):
    """The client's listener could not be reached."""


async def connect_back(address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Stream:
    """Open the TCP connection to the address and port a request named.

    Raises:
        CallbackFailed: refused, unreachable or not accepted within ``timeout``.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port), timeout=timeout
        )
    except TimeoutError:
        raise CallbackFailed(f"no answer within {timeout:g}s") from None
    except OSError as exc:
        raise CallbackFailed(exc.strerror or str(exc)) from None
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def authenticate(session: ServerSession, stream: Stream, now: Callable[[], float]) -> bool:
    """Drive the challenge-response until the session is authenticated or failed."""
    reader, writer = stream
    while session.phase in (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE):
        out = session.data_to_send()
        if out:
            writer.write(out)
        assert session.deadline is not None
        wait = max(session.deadline - now(), 0.0)
        try:
            data = await asyncio.wait_for(reader.read(session.bytes_wanted), timeout=wait)
        except TimeoutError:
            session.handle_timer(now())
            continue
        except OSError:
            data = b""
        if not data:
            session.connection_closed()
            break
        session.receive_data(data, now())
    out = session.data_to_send()
    if out:
        writer.write(out)
    return session.phase is Phase.AUTHENTICATED


async def flush_and_close(
    session: ServerSession, writer: asyncio.StreamWriter, timeout: float
) -> None:
    """Write what the session still has to say, then close; a stalled reader cannot hold us."""
    out = session.data_to_send()
    try:
        if out:
            writer.write(out)
            await asyncio.wait_for(writer.drain(), timeout=timeout)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=1.0)


async def start_listener(
    host: str,
    port: int,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.Server:
    """The listener ``fence_virt -T`` talks to. Raises OSError when the port is taken."""
    return await asyncio.start_server(handler, host, port, reuse_address=True)
