"""The network shell, root-free on loopback: the UDP endpoint drains datagrams in batches, the
multicast listener refuses a second daemon on its port, the TCP channel reads exactly, runs the
challenge-response and cuts off peers that stall, the connect-back gives up in time, and the
start-up errors name what went wrong.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support import pyclient
from xvmd.daemon.settings import Settings
from xvmd.daemon.sockets import StartupError, bind_error, open_sockets
from xvmd.net import tcp, udp
from xvmd.net.iface import InterfaceError, LinkWatcher, follow_links, interface_index, is_loopback
from xvmd.protocol.auth import Key
from xvmd.protocol.session import Phase, ServerSession
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType, Op, Result

T = TypeVar("T")
KEY = Key(os.urandom(64))
GROUP = "225.0.0.12"
LO = socket.if_nametoindex("lo")


def loopback_udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def send(dest: socket.socket, payloads: list[bytes]) -> socket.socket:
    """Queue ``payloads`` on ``dest`` (loopback delivers before sendto returns)."""
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for data in payloads:
        out.sendto(data, dest.getsockname())
    return out


# -- UDP -------------------------------------------------------------------------------------------


async def wake_ups(sock: socket.socket, expected: int) -> list[int]:
    """Datagrams handled per wake-up of the endpoint: a callback scheduled from the handler runs
    only once the current wake-up (one ``_drain``) has returned."""
    loop = asyncio.get_running_loop()
    batches: list[int] = []
    current: list[bytes] = []
    done = asyncio.Event()

    def close_batch() -> None:
        batches.append(len(current))
        current.clear()
        if sum(batches) >= expected:
            done.set()

    def handler(data: bytes, _addr: tuple[str, int]) -> None:
        if not current:
            loop.call_soon(close_batch)
        current.append(data)

    endpoint = await udp.listen(sock, handler)
    try:
        await asyncio.wait_for(done.wait(), 2)
    finally:
        endpoint.close()
    return batches


@pytest.mark.parametrize(("batch", "expected"), [(4, [4, 4, 2]), (udp.BATCH, [10])])
def test_a_wake_up_drains_up_to_a_batch(
    monkeypatch: pytest.MonkeyPatch, batch: int, expected: list[int]
) -> None:
    monkeypatch.setattr(udp, "BATCH", batch)
    sock = loopback_udp()
    with send(sock, [b"%d" % n for n in range(10)]):
        assert asyncio.run(wake_ups(sock, 10)) == expected
    assert sock.fileno() == -1  # close() closes the socket it was given


def test_the_handler_gets_each_datagram_and_its_source() -> None:
    sock = loopback_udp()
    got: list[tuple[bytes, tuple[str, int]]] = []

    async def scenario() -> None:
        arrived = asyncio.Event()

        def handler(data: bytes, addr: tuple[str, int]) -> None:
            got.append((data, addr))
            arrived.set()

        endpoint = await udp.listen(sock, handler)
        with send(sock, [b"one"]) as out:
            await asyncio.wait_for(arrived.wait(), 2)
            source = out.getsockname()
        endpoint.close()
        assert got == [(b"one", ("127.0.0.1", source[1]))]

    asyncio.run(scenario())


class RefusedOnce(socket.socket):
    """A UDP socket whose first read reports a queued ICMP error, as the kernel may."""

    failed = False

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        if not self.failed:
            self.failed = True
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        data, addr = super().recvfrom(bufsize, flags)
        return data, addr


def test_a_queued_socket_error_does_not_stop_the_batch() -> None:
    sock = RefusedOnce(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    with send(sock, [b"a", b"b"]):
        assert asyncio.run(wake_ups(sock, 2)) == [2]
    assert sock.failed


# -- the multicast listener ------------------------------------------------------------------------


@pytest.fixture
def multicast() -> Iterator[socket.socket]:
    """A listener on a free port, in the group on loopback (skipped where it cannot join)."""
    try:
        sock = udp.open_multicast_socket(GROUP, 0, LO)
    except OSError as exc:
        pytest.skip(f"cannot join {GROUP} on lo here: {exc}")
    with sock:
        yield sock


def test_the_listener_serves_unicast_and_the_group(multicast: socket.socket) -> None:
    port = multicast.getsockname()[1]
    assert multicast.getsockname()[0] == "0.0.0.0"  # the wildcard: unicast to the port too
    pyclient.send_datagram(b"to the group", (GROUP, port))
    pyclient.send_datagram(b"unicast", ("127.0.0.1", port))
    multicast.settimeout(2.0)  # a blocking read here: no event loop in this test
    assert {multicast.recv(100), multicast.recv(100)} == {b"to the group", b"unicast"}


def test_a_second_listener_on_the_port_is_refused(multicast: socket.socket) -> None:
    # No SO_REUSEADDR: a second daemon must fail rather than answer the same requests.
    with pytest.raises(OSError) as info:
        udp.open_multicast_socket(GROUP, multicast.getsockname()[1], LO)
    assert info.value.errno == errno.EADDRINUSE


def test_join_says_whether_a_membership_was_added(multicast: socket.socket) -> None:
    assert udp.join(multicast, GROUP, LO) is False  # already a member: nothing to do
    mreqn = socket.inet_aton(GROUP) + socket.inet_aton("0.0.0.0") + LO.to_bytes(4, "little")
    multicast.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqn)
    assert udp.join(multicast, GROUP, LO) is True  # what a re-created interface needs


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


def test_open_sockets_on_a_taken_port_names_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as info:
            open_sockets(Settings(port=port, family="ipv4", interface="lo"))
    assert str(info.value) == (
        f"UDP {GROUP} port {port} on lo: address already in use "
        "(is fence_virtd or another xvmd running?)"
    )


def test_open_sockets_closes_what_it_opened_when_a_later_one_fails() -> None:
    port = free_udp_port()
    try:
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        pytest.skip("no IPv6 here")
    with v6:
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::", port))  # the optional IPv6 listener's port is taken: still fatal
        with pytest.raises(StartupError, match="address already in use"):
            open_sockets(Settings(port=port, interface="lo"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("0.0.0.0", port))  # the IPv4 listener opened first was closed


def test_open_sockets_with_an_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_udp_port()
    try:
        opened = open_sockets(Settings(port=port, family="ipv4", interface="lo"))
    except StartupError as exc:
        pytest.skip(f"cannot join {GROUP} on lo here: {exc}")
    try:
        assert [(lst.group, lst.port, s.getsockname()) for lst, s in opened] == [
            (GROUP, port, ("0.0.0.0", port))
        ]
    finally:
        for _, s in opened:
            s.close()


def test_open_sockets_on_an_unknown_interface() -> None:
    with pytest.raises(StartupError, match="network interface 'nosuch0' does not exist"):
        open_sockets(Settings(family="ipv4", interface="nosuch0"))


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.EADDRINUSE, "X: address already in use (is fence_virtd or another xvmd running?)"),
        (errno.ENODEV, "X: no interface to join the group on (no multicast route); name one "),
        (errno.EACCES, "X: permission denied"),
        (errno.EINVAL, "X: Invalid argument"),
    ],
)
def test_bind_errors_say_what_to_do(code: int, text: str) -> None:
    assert str(bind_error("X", OSError(code, os.strerror(code)))).startswith(text)


def test_interface_index_agrees_with_the_kernel() -> None:
    assert interface_index("lo") == int(Path("/sys/class/net/lo/ifindex").read_text())
    with pytest.raises(InterfaceError, match="'nosuch0' does not exist"):
        interface_index("nosuch0")


def test_links_are_followed_except_on_loopback() -> None:
    assert is_loopback("lo")
    assert not is_loopback("nosuch0")
    for _, other in socket.if_nameindex():  # the kernel's word, as sysfs has it where it can
        sysfs = Path(f"/sys/class/net/{other}/flags")
        if sysfs.exists():  # sysfs may belong to another network namespace
            assert is_loopback(other) == bool(int(sysfs.read_text(), 16) & 0x8), other
    assert follow_links("lo", lambda *_: None) is None  # never re-created: nothing to follow
    for named in (None, "br-guests"):  # any interface, or one that can come and go
        assert isinstance(follow_links(named, lambda *_: None), LinkWatcher)


def test_pyroute2_is_imported_only_where_links_are_followed() -> None:
    """pyroute2 costs ~12 MiB and ~90 ms at import: a daemon on loopback must not pay it."""
    code = "import sys, xvmd.cli.run, xvmd.daemon.daemon; print('pyroute2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- TCP: the listener and its channels ------------------------------------------------------------


def with_listener(scenario: Callable[[int, asyncio.Queue[tcp.Channel]], Awaitable[T]]) -> T:
    """Run ``scenario(port, channels)`` against a listener on 127.0.0.1 that puts each new
    connection's Channel on ``channels`` and holds it until the connection ends."""

    async def main() -> T:
        channels: asyncio.Queue[tcp.Channel] = asyncio.Queue()

        async def on_connection(channel: tcp.Channel) -> None:
            await channels.put(channel)
            await channel.closed

        server = await tcp.start_listener("127.0.0.1", 0, on_connection)
        try:
            return await scenario(server.sockets[0].getsockname()[1], channels)
        finally:
            server.close()

    return asyncio.run(main())


def session(step_timeout: float = 5.0) -> ServerSession:
    now = asyncio.get_running_loop().time()
    return ServerSession(
        auth=HashType.SHA256,
        key=KEY,
        challenge=os.urandom(CHALLENGE_SIZE),
        now=now,
        step_timeout=step_timeout,
    )


def test_each_connection_gets_a_channel_that_knows_its_peer() -> None:
    async def scenario(port: int, channels: asyncio.Queue[tcp.Channel]) -> None:
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        channel = await asyncio.wait_for(channels.get(), 2)
        assert channel.peer == w.get_extra_info("sockname")
        w.close()
        await asyncio.wait_for(channel.closed, 2)  # the peer's close ends the channel

    with_listener(scenario)


def test_read_exact_waits_for_every_byte_then_times_out_or_sees_the_close() -> None:
    async def scenario(port: int, channels: asyncio.Queue[tcp.Channel]) -> None:
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        channel = await asyncio.wait_for(channels.get(), 2)
        reading = asyncio.create_task(channel.read_exact(100, 2.0))
        for part in (b"a" * 10, b"b" * 60, b"c" * 40):  # 110 bytes in three pieces
            w.write(part)
            await w.drain()
        assert await reading == b"a" * 10 + b"b" * 60 + b"c" * 30
        assert await channel.read_exact(10, 2.0) == b"c" * 10  # the rest was kept
        # A peer that sends nothing more: the (short) timeout is the behaviour under test.
        assert await channel.read_exact(1, 0.1) is None
        w.close()
        assert await asyncio.wait_for(channel.read_exact(1, 5.0), 2) is None  # closed: at once

    with_listener(scenario)


async def client_handshake(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, key: Key, lead: bytes = b""
) -> bytes:
    """The client's side of the challenge-response; returns what follows it (the result)."""
    c1 = os.urandom(CHALLENGE_SIZE)
    w.write(lead + c1)
    assert await r.readexactly(CHALLENGE_SIZE) == KEY.digest(HashType.SHA256, c1)
    w.write(key.digest(HashType.SHA256, await r.readexactly(CHALLENGE_SIZE)))
    return await r.read()


def test_a_request_then_the_handshake_then_the_result() -> None:
    request = pyclient.build(Op.STATUS, "vm", KEY, port=1)

    async def scenario(port: int, channels: asyncio.Queue[tcp.Channel]) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        # The request and the client's challenge in one write, as a fast client sends them.
        client = asyncio.create_task(client_handshake(r, w, KEY, lead=request))
        channel = await asyncio.wait_for(channels.get(), 2)
        assert await channel.read_exact(len(request), 2.0) == request
        s = session()
        assert await asyncio.wait_for(channel.authenticate(s), 2) is True
        s.send_result(Result.SUCCESS)
        await channel.finish(s, 2.0)
        assert await client == bytes([Result.SUCCESS])  # then the daemon closed
        w.close()

    with_listener(scenario)


@pytest.mark.parametrize("peer", ["wrong key", "hangs up", "silent"])
def test_a_handshake_that_fails_says_why(peer: str) -> None:
    async def scenario(port: int, channels: asyncio.Queue[tcp.Channel]) -> ServerSession:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        channel = await asyncio.wait_for(channels.get(), 2)
        if peer == "wrong key":
            client = asyncio.create_task(client_handshake(r, w, Key(b"another key")))
        elif peer == "hangs up":
            w.close()
        s = session(step_timeout=0.1)  # the timeout is the behaviour under test: short
        assert await asyncio.wait_for(channel.authenticate(s), 2) is False
        if peer == "wrong key":
            await channel.finish(s, 1.0)
            assert await client == b""  # no result for a client that failed
        w.close()
        return s

    s = with_listener(scenario)
    assert s.phase is Phase.FAILED
    assert (
        s.failure
        == {
            "wrong key": "client answered our challenge wrongly (wrong key or auth type)",
            "hangs up": "client closed the connection during await-challenge",
            "silent": "timed out in await-challenge",
        }[peer]
    )


def test_finish_cuts_off_a_reader_that_stalls() -> None:
    async def scenario(port: int, channels: asyncio.Queue[tcp.Channel]) -> float:
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        assert isinstance(w.transport, asyncio.Transport)
        w.transport.pause_reading()  # never takes a byte off the wire
        channel = await asyncio.wait_for(channels.get(), 2)
        assert channel.transport is not None
        channel.transport.write(b"x" * (16 << 20))  # far more than the socket buffers hold
        loop = asyncio.get_running_loop()
        started = loop.time()
        await channel.finish(None, 0.2)  # the write timeout is the behaviour under test
        took = loop.time() - started
        await asyncio.wait_for(channel.closed, 1)  # aborted: the connection is gone
        w.close()
        return took

    assert 0.15 <= with_listener(scenario) < 1.5


def test_finish_lets_a_reader_that_reads_have_everything() -> None:
    async def scenario(port: int, channels: asyncio.Queue[tcp.Channel]) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        channel = await asyncio.wait_for(channels.get(), 2)
        assert channel.transport is not None
        channel.transport.write(b"y" * (4 << 20))
        reading = asyncio.create_task(r.read())
        await channel.finish(None, 5.0)
        try:
            return await reading  # up to the daemon's close
        finally:
            w.close()

    assert with_listener(scenario) == b"y" * (4 << 20)


# -- TCP: the connect-back -------------------------------------------------------------------------


def test_connect_back_reaches_a_listening_client() -> None:
    async def scenario() -> tuple[tuple[str, int], tuple[str, int]]:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        channel = await tcp.connect_back("127.0.0.1", address[1], timeout=2.0)
        channel.abort()
        server.close()
        return channel.peer, address

    peer, address = asyncio.run(scenario())
    assert peer == address


def test_connect_back_to_a_closed_port_fails_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(tcp.CallbackFailed, match="Connect call failed"):
            asyncio.run(tcp.connect_back("127.0.0.1", port, timeout=2.0))


@pytest.fixture
def unanswering() -> Iterator[int]:
    """A port whose accept queue is full: connection attempts get no answer at all."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # fills the queue of one
        yield listener.getsockname()[1]


def test_connect_back_gives_up_at_its_timeout(unanswering: int) -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(tcp.CallbackFailed, match=r"no answer within 0\.2s"):
            await tcp.connect_back("127.0.0.1", unanswering, timeout=0.2)
        return loop.time() - started

    assert 0.15 <= asyncio.run(scenario()) < 1.5
