"""Test doubles shared by the unit tests: a manual clock for the blocking operations, a quorum
source, a stand-in for systemd's notification socket, and a live daemon on the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tests.support import pyclient
from xvmd.core.operations import Clock
from xvmd.daemon.settings import ListenAddress
from xvmd.quorum import NOT_CONNECTED, Member, QuorumStatus

if TYPE_CHECKING:  # the conftest imports this module: keep the daemon out of its imports
    from xvmd.daemon.daemon import Daemon
    from xvmd.net.iface import LinkEvent
    from xvmd.protocol.auth import Key
    from xvmd.protocol.wire import Op


class ManualClock:
    """Monotonic time that moves only when someone sleeps (or the test advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.start = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.time += seconds

    @property
    def elapsed(self) -> float:
        return self.time - self.start

    def clock(self) -> Clock:
        return Clock(self.now, self.sleep)


# -- quorum ----------------------------------------------------------------------------------------

QUORATE = QuorumStatus(
    connected=True,
    quorate=True,
    reason="quorate",
    quorum_set=True,
    ring_id=(1, 8),
    local_nodeid=1,
    members=(Member(1, "h1", ("192.0.2.1",)), Member(2, "h2")),
    expected_votes=2,
    total_votes=2,
    quorum=2,
    cluster_name="hosts",
)


class FakeQuorum:
    """A QuorumSource whose status the test sets. ``start``/``stop`` are logged in ``trace``;
    once stopped it reports NOT_CONNECTED, as a source that let go of corosync does."""

    def __init__(self, status: QuorumStatus = QUORATE, trace: list[str] | None = None) -> None:
        self.status = status
        self.trace = trace if trace is not None else []
        self.stopped = asyncio.Event()

    def current(self) -> QuorumStatus:
        return NOT_CONNECTED if self.stopped.is_set() else self.status

    async def start(self) -> None:
        self.trace.append("quorum.start")

    async def stop(self) -> None:
        self.trace.append("quorum.stop")
        self.stopped.set()


# -- systemd ---------------------------------------------------------------------------------------


class NotifySocket:
    """Stands in for systemd's NOTIFY_SOCKET: a datagram socket collecting what is sent to it.
    ``address`` is a path, or ``@name`` for the abstract namespace (as systemd writes it)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.seen: list[dict[str, str]] = []

    @staticmethod
    def parse(data: bytes) -> dict[str, str]:
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def take(self, timeout: float = 2.0) -> dict[str, str]:
        """The next message (blocking); fails the test after ``timeout``."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            raise AssertionError(f"nothing sent to {self.address} in {timeout}s")
        msg = self.parse(self.sock.recv(4096))
        self.seen.append(msg)
        return msg

    async def next(
        self, field: str, value: str | None = None, timeout: float = 5.0
    ) -> dict[str, str]:
        """The next message carrying ``field`` (with ``value``, if given); others are kept in
        ``seen`` and skipped."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                msg = self.parse(await loop.sock_recv(self.sock, 4096))
                self.seen.append(msg)
                if field in msg and (value is None or msg[field] == value):
                    return msg

    def close(self) -> None:
        self.sock.close()


# -- a live daemon on the test's event loop --------------------------------------------------------

LISTENER_GROUP = "225.0.0.12"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Links:
    """Stands in for the netlink watcher (the daemon's ``links`` factory): the test delivers
    link events itself, and no netlink thread outlives the test."""

    def __init__(self) -> None:
        self.on_event: LinkEvent | None = None
        self.running = False

    def __call__(self, interface: str | None, on_event: LinkEvent) -> Links:
        self.on_event = on_event
        return self

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


def loopback_listener() -> tuple[ListenAddress, socket.socket]:
    """A unicast stand-in for the multicast listener: the daemon serves unicast to its port
    too, so no group has to be joined (no multicast route needed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return ListenAddress(LISTENER_GROUP, sock.getsockname()[1]), sock


def handlers() -> dict[signal.Signals, Any]:
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


def assert_no_signal_handlers(before: dict[signal.Signals, Any]) -> None:
    """Checked on the loop that ran the daemon (closing the loop would remove them anyway):
    each signal is back to what it was, or for SIGINT to Python's default (what the loop's
    ``remove_signal_handler`` restores in place of asyncio.run's own)."""
    after = handlers()
    assert after[signal.SIGTERM] == before[signal.SIGTERM] == signal.SIG_DFL
    assert after[signal.SIGHUP] == before[signal.SIGHUP] == signal.SIG_DFL
    assert after[signal.SIGINT] in (before[signal.SIGINT], signal.default_int_handler)


def deliver(sig: signal.Signals) -> None:
    """Send ``sig`` to this process, only once a handler is there (never kill the test run)."""
    assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN), sig.name
    os.kill(os.getpid(), sig)


async def until(check: Callable[[], object], timeout: float = 2.0) -> None:
    """Let the loop run until ``check()`` holds (no wall-clock sleeping)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0)


async def either(*waits: Awaitable[Any], timeout: float = 5.0) -> None:
    """Return once the first of ``waits`` is done (or after ``timeout``)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()


@contextlib.asynccontextmanager
async def serving(daemon: Daemon, notify: NotifySocket) -> AsyncIterator[tuple[str, int]]:
    """Run ``daemon`` until the block ends, then stop it and check it let go of everything;
    yields the UDP address it serves. ``notify`` must be the daemon's NOTIFY_SOCKET."""
    lst, sock = loopback_listener()
    before = handlers()
    task = asyncio.create_task(daemon.run([(lst, sock)]))
    await either(notify.next("READY"), asyncio.shield(task))
    if task.done():
        task.result()  # raises what stopped the start
    try:
        yield ("127.0.0.1", lst.port)
    finally:
        daemon.request_stop()
        assert await task == 0
        assert_no_signal_handlers(before)
        assert sock.fileno() == -1


async def ask(dest: tuple[str, int], op: Op, target: str, key: Key) -> pyclient.Reply:
    """One request through the in-tree client, in a thread: the daemon runs on this loop."""

    def blocking() -> pyclient.Reply:
        with pyclient.callback_listener() as listener:
            packet = pyclient.build(op, target, key, port=listener.getsockname()[1])
            return pyclient.request(packet, dest, listener, key, op=op, wait=2.0)

    return await asyncio.to_thread(blocking)
