"""Attacks on the TCP phase of a running xvmd by a raw client that holds no key.

The attacker is plain Python sockets inside the test's private network namespace (``ns_socket``,
``IdleFlood``), talking to 127.0.0.x only. Where it needs signed packets it has "captured" ones:
built with the test's key by ``pyclient.build`` *before* the attack, standing for packets sniffed
off the guest network. The attacking code itself never sees the key. The real ``fence_xvm`` /
``fence_virt`` show that honest clients are still served.

1. Challenge reflection over the ``--tcp`` listener: session A's challenge C2_A is sent as
   session B's client challenge; the daemon must not answer it, so A cannot authenticate. And
   one captured packet on two listener connections within 10 s starts one session only.
2. The same reflection across two connect-backs to the attacker's own listener.
3. Starvation: idle connections to the listener leave multicast fencing alone, one peer
   address holds at most ``per_peer`` listener places, and stalled connect-backs that fill the
   multicast quota leave the listener alone.
4. Connect-backs to addresses no client listens on (0.0.0.0, multicast, broadcast), and in
   cluster mode to an address of no cluster node (another local service), are never made.

5. Reflection between two daemons that share one key (the usual ``--no-ccs`` layout): each
   refuses the other's tagged challenge.
6. A request signed by SHA-256 length extension of one challenge answer (possible for key
   lengths whose padding fits inside a request, e.g. the 45 bytes of
   ``openssl rand -base64 32``) is refused as ``forged``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.e2e.test_cluster_conf import Deployment, start_xvmd_ccs
from tests.support import pyclient
from tests.support.harness import FENCE_VIRT, ClientResult, Netns, Xvmd, fence_xvm
from tests.support.inside import closed_port, dropped, enter_netns, ns_socket, status
from tests.support.lengthext import IV256, forge, md_pad, sha256_blocks
from xvmd.daemon.settings import Settings
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType, Op

try:
    from xvmd.core.limits import Limits

    LIMITS: Any = Limits()
except ImportError:  # the daemon before the separate quotas (kept runnable there, to compare)
    LIMITS = None

pytestmark = pytest.mark.e2e

MAX_SESSIONS = Settings().max_sessions  # multicast sessions in all
PER_CALLBACK = LIMITS.per_callback if LIMITS else 4  # sessions to one callback address and port
MAX_STREAM = LIMITS.max_stream if LIMITS else 32  # --tcp listener clients in all
PER_PEER = LIMITS.per_peer if LIMITS else 4  # ... from one peer address
HEAD = 2 * CHALLENGE_SIZE  # the daemon's answer to C1 and its own challenge C2
SEQNO_AT, HASH_AT = 104, 112  # offsets in the request (docs/protocol.md §2)

# -- the attacker's sockets, inside the namespace ------------------------------------------------


def ns_listener(netns: Netns, host: str = "127.0.0.1", backlog: int = 16) -> socket.socket:
    lst = ns_socket(netns)
    lst.bind((host, 0))
    lst.listen(backlog)
    return lst


@dataclass
class Read:
    data: bytes
    closed: bool  # the peer closed or reset the connection (not merely a timeout)


def read_some(sock: socket.socket, n: int, timeout: float) -> Read:
    """Up to ``n`` bytes; fewer when the peer closes first or ``timeout`` passes."""
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Read(buf, False)
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            return Read(buf, False)
        except ConnectionResetError:
            return Read(buf, True)
        if not chunk:
            return Read(buf, True)
        buf += chunk
    return Read(buf, False)


def accepted_within(lst: socket.socket, timeout: float) -> bool:
    """True when a connection reached ``lst`` within ``timeout`` (it is closed at once)."""
    lst.settimeout(timeout)
    try:
        conn, _ = lst.accept()
    except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0
        return False
    conn.close()
    return True


# -- the daemon's view and the honest clients -----------------------------------------------------


def xvm_status(netns: Netns, d: Xvmd, key_file: Path, vm: str) -> ClientResult:
    """The real fence_xvm (multicast): ``-o status``."""
    args = ["-p", str(d.port), "-k", str(key_file), "-t", "5", "-o", "status", "-H", vm]
    return fence_xvm(netns, *args)


def virt_status(netns: Netns, port: int, key_file: Path, vm: str) -> ClientResult:
    """The real fence_virt over the TCP listener: ``-T 127.0.0.1 -o status``."""
    args = ["-T", "127.0.0.1", "-p", str(port), "-k", str(key_file), "-t", "5"]
    return fence_xvm(netns, *args, "-o", "status", "-H", vm, program=FENCE_VIRT)


def assert_on(res: ClientResult, d: Xvmd) -> None:
    assert (res.rc, res.stdout.strip()) == (0, "Status: ON"), res.output + d.log()[-3000:]


# -- 1, 2: challenge reflection ------------------------------------------------------------------

Opener = Callable[[], socket.socket]
"""Opens one session up to the point where the daemon waits for the client challenge C1."""


@dataclass
class Reflection:
    a_head: Read  # A's answer to the attacker's C1: R(C1), then the daemon's challenge C2_A
    b_reply: Read  # B's answer to C2_A, sent as B's client challenge
    a_result: Read  # what A sends after the attacker's answer to C2_A

    def __str__(self) -> str:
        return (
            f"A head {len(self.a_head.data)} bytes; B answered {len(self.b_reply.data)} bytes "
            f"(closed: {self.b_reply.closed}); A result {self.a_result.data!r}"
        )


def reflect(open_a: Opener, open_b: Opener) -> Reflection:
    """The attack, with no key: get C2_A on A, have the daemon answer it on B, answer A."""
    a = open_a()
    try:
        a.sendall(os.urandom(CHALLENGE_SIZE))  # any C1 will do: its answer is never checked
        head = read_some(a, HEAD, 3.0)
        c2_a = head.data[CHALLENGE_SIZE:].ljust(CHALLENGE_SIZE, b"\0")
        with open_b() as b:
            b.sendall(c2_a)
            reply = read_some(b, HEAD, 3.0)
        # Whatever B gave (from an unprotected daemon: R(C2_A)) is the attacker's only answer.
        with contextlib.suppress(OSError):
            a.sendall(reply.data[:CHALLENGE_SIZE].ljust(CHALLENGE_SIZE, b"\0"))
        return Reflection(head, reply, read_some(a, 1, 5.0))
    finally:
        a.close()


def via_listener(netns: Netns, port: int, packet: bytes, source: str | None = None) -> Opener:
    """A session on the --tcp listener: connect (from ``source``), send the captured packet."""

    def open_session() -> socket.socket:
        s = ns_socket(netns)
        if source is not None:
            s.bind((source, 0))
        s.settimeout(3.0)
        s.connect(("127.0.0.1", port))
        s.sendall(packet)
        return s

    return open_session


def via_callback(udp: socket.socket, lst: socket.socket, packet: bytes, port: int) -> Opener:
    """A connect-back session: send the captured datagram, accept the daemon's connection."""

    def open_session() -> socket.socket:
        udp.sendto(packet, ("127.0.0.1", port))
        lst.settimeout(3.0)
        conn, _ = lst.accept()
        return conn

    return open_session


def assert_reflection_refused(r: Reflection, d: Xvmd, vm01: ClientResult) -> None:
    """``vm01``: the real fence_xvm's status of vm-01 (the attacked target) after the attack."""
    outcome = f"{r}; then vm-01: {vm01.output}"
    assert len(r.a_head.data) == HEAD, f"session A never started: {outcome}"
    assert r.b_reply.data == b"" and r.b_reply.closed, f"the daemon answered C2_A: {outcome}"
    assert r.a_result.data == b"" and r.a_result.closed, f"session A was answered: {outcome}"
    assert_on(vm01, d)  # never powered off
    assert d.wait_for_log("(challenge reflection)", timeout=3), d.log()[-3000:]
    assert "ATTACK" in d.log()
    counters = status(d)["counters"]["dropped"]
    assert counters.get("reflection") == 1, counters  # B
    assert counters.get("auth-failed") == 1, counters  # A: the attacker had no answer


def test_challenge_reflection_over_the_tcp_listener_is_refused(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, port: int
) -> None:
    d = start_xvmd("--tcp", f"127.0.0.1:{port}")
    key = Key(key_file.read_bytes())
    off_a = pyclient.build(Op.OFF, "vm-01", key, address=None, seqno=101_001)
    status_b = pyclient.build(Op.STATUS, "vm-02", key, address=None, seqno=101_002)
    del key  # from here on the attacker has the captured bytes only
    r = reflect(via_listener(netns, port, off_a), via_listener(netns, port, status_b))
    vm01 = xvm_status(netns, d, key_file, "vm-01")
    print(f"reflection over the listener: {r}; vm-01: {vm01.output}")
    assert_reflection_refused(r, d, vm01)
    assert_on(virt_status(netns, port, key_file, "vm-02"), d)  # the listener still serves


def test_captured_packet_on_two_listener_connections_starts_one_session(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, port: int
) -> None:
    d = start_xvmd("--tcp", f"127.0.0.1:{port}")
    key = Key(key_file.read_bytes())
    captured = [
        pyclient.build(Op.STATUS, "vm-02", key, address=None, seqno=102_001),
        pyclient.build(Op.OFF, "vm-03", key, address=None, seqno=102_002),
    ]
    del key
    heads: list[tuple[int, int]] = []
    for packet in captured:
        first = via_listener(netns, port, packet)()
        with first, via_listener(netns, port, packet)() as second:
            # Both within a second: the second is a copy, whatever it is for.
            for s in (first, second):
                s.sendall(os.urandom(CHALLENGE_SIZE))
            again = read_some(second, HEAD, 3.0)
            heads.append((len(read_some(first, HEAD, 3.0).data), len(again.data)))
            assert again.closed or again.data, "the daemon neither answered nor closed"
    assert heads == [(HEAD, 0), (HEAD, 0)], f"(first, second) answers: {heads}"
    assert dropped(d, "duplicate") == 2
    assert_on(virt_status(netns, port, key_file, "vm-03"), d)  # the off was never done
    assert_on(virt_status(netns, port, key_file, "vm-02"), d)


def test_challenge_reflection_across_connect_backs_is_refused(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    lst = ns_listener(netns)
    udp = ns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    cb = lst.getsockname()[1]
    key = Key(key_file.read_bytes())
    off_a = pyclient.build(Op.OFF, "vm-01", key, port=cb, seqno=103_001)
    status_b = pyclient.build(Op.STATUS, "vm-02", key, port=cb, seqno=103_002)
    del key
    with lst, udp:
        r = reflect(via_callback(udp, lst, off_a, d.port), via_callback(udp, lst, status_b, d.port))
    vm01 = xvm_status(netns, d, key_file, "vm-01")
    print(f"reflection across connect-backs: {r}; vm-01: {vm01.output}")
    assert_reflection_refused(r, d, vm01)


def test_reflection_between_two_daemons_sharing_a_key(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, port: int
) -> None:
    host_a = start_xvmd("--tcp", f"127.0.0.1:{port}")
    # Not port + 1: that is host A's UDP port, where fence_xvm listens for its callback.
    port_b = closed_port(netns)
    start_xvmd("--tcp", f"127.0.0.1:{port_b}")
    key = Key(key_file.read_bytes())
    off_a = pyclient.build(Op.OFF, "vm-01", key, address=None, seqno=104_001)
    status_b = pyclient.build(Op.STATUS, "vm-02", key, address=None, seqno=104_002)
    del key
    r = reflect(via_listener(netns, port, off_a), via_listener(netns, port_b, status_b))
    vm01 = xvm_status(netns, host_a, key_file, "vm-01")
    print(f"reflection between two daemons: {r}; vm-01 on host A: {vm01.output}")
    assert r.a_result.data == b"", f"host A authenticated the attacker: {r}"
    assert_on(vm01, host_a)


# -- a signature forged from one challenge answer -----------------------------------------------


def test_signature_forged_from_a_challenge_answer_is_refused(
    start_xvmd: XvmdFactory, netns: Netns, tmp_path: Path, port: int
) -> None:
    msg = os.urandom(100)  # the SHA-256 code below is checked against hashlib first
    assert (
        struct.pack(">8I", *sha256_blocks(IV256, msg + md_pad(100))) == hashlib.sha256(msg).digest()
    )
    key_file = tmp_path / "b64.key"
    key_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")  # openssl rand -base64 32
    key_file.chmod(0o600)
    d = start_xvmd("--tcp", f"127.0.0.1:{port}", key=key_file)
    key = Key(key_file.read_bytes())
    captured = pyclient.build(Op.STATUS, "vm-02", key, address=None, seqno=108_001)
    del key
    key_len = 45  # a guess: that recipe's length; the attacker never reads the key
    prefix = bytes([int(Op.OFF), int(HashType.SHA256), 0, 0]) + b"vm-01".ljust(60, b"\0")
    with via_listener(netns, port, captured)() as oracle:
        oracle.sendall(prefix)  # the forged request's first 64 bytes, as a client challenge
        answer = read_some(oracle, CHALLENGE_SIZE, 3.0).data
    assert len(answer) == CHALLENGE_SIZE, "no oracle session"
    with via_listener(netns, port, forge(prefix, answer, key_len, seqno=108_002))() as s:
        s.sendall(os.urandom(CHALLENGE_SIZE))
        head = read_some(s, HEAD, 3.0)
    print(f"forged 'off vm-01': the daemon answered {len(head.data)} bytes")
    assert head.data == b"", "a request nobody signed passed the signature check"
    assert dropped(d, "forged") == 1
    assert d.wait_for_log("length extension")


# -- 3: starvation -------------------------------------------------------------------------------


class IdleFlood:
    """``count`` idle connections to 127.0.0.1:``port`` from ``sources`` in turn, held by a
    thread inside ``netns``; any the daemon cuts off or refuses is opened again at once."""

    def __init__(self, netns: Netns, port: int, sources: list[str], count: int = 150) -> None:
        self.netns, self.port, self.sources, self.count = netns, port, sources, count
        self.opened = 0
        self.cut = 0  # connections the daemon closed, reset or refused
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((self.sources[i % len(self.sources)], 0))
        s.connect_ex(("127.0.0.1", self.port))  # in progress; failures show up in poll
        self.opened += 1
        return s

    def _run(self) -> None:
        socks: dict[int, tuple[int, socket.socket]] = {}
        poller = select.poll()
        try:
            enter_netns(self.netns)
            for i in range(self.count):
                s = self._open(i)
                socks[s.fileno()] = (i, s)
                poller.register(s, select.POLLIN)
            while not self._stop.is_set():
                # The daemon never writes to an idle client: any event means it is gone.
                for fd, _ in poller.poll(50):
                    i, s = socks.pop(fd)
                    poller.unregister(fd)
                    s.close()
                    self.cut += 1
                    s = self._open(i)
                    socks[s.fileno()] = (i, s)
                    poller.register(s, select.POLLIN)
        except BaseException as exc:  # reported by __exit__
            self.error = exc
        finally:
            for _, s in socks.values():
                s.close()

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, f"the flood failed: {self.error!r}"


def peak_sessions(d: Xvmd, seconds: float) -> int:
    """The most sessions (multicast and listener) xvmd reported while sampled for ``seconds``."""
    peak, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, int(status(d)["active_sessions"]))
        time.sleep(0.05)
    return peak


@pytest.fixture
def flood_sources() -> list[str]:
    """Enough peer addresses that the per-peer cap never binds: the total quota does."""
    return [f"127.0.1.{i}" for i in range(1, 1 + 150 // PER_PEER + 1)]


def test_idle_listener_connections_do_not_starve_multicast(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, port: int, flood_sources: list[str]
) -> None:
    d = start_xvmd("--tcp", f"127.0.0.1:{port}")
    with IdleFlood(netns, port, flood_sources) as flood:
        time.sleep(0.3)  # every connection opened once
        peak = peak_sessions(d, 1.5)  # past the 1 s cut-off: the reopened ones too
        res = xvm_status(netns, d, key_file, "vm-01")
        busy = dropped(d, "listener-busy")
    print(f"flood: {flood.opened} opened, {flood.cut} cut; peak {peak} sessions, {busy} refused")
    assert res.rc == 0 and res.seconds < 3.0, (res, d.log()[-3000:])
    assert "Status: ON" in res.stdout
    assert peak <= MAX_STREAM, f"{peak} listener clients held at once"
    assert busy > 0 and flood.cut > flood.count, "the flood never filled the listener"


def test_one_peer_holds_at_most_its_share_of_the_listener(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, port: int
) -> None:
    d = start_xvmd("--tcp", f"127.0.0.1:{port}")
    with IdleFlood(netns, port, ["127.0.0.2"]):
        time.sleep(0.3)
        before = dropped(d, "listener-peer-busy")
        peak = peak_sessions(d, 1.5)
        res = virt_status(netns, port, key_file, "vm-01")  # from 127.0.0.1
        after = dropped(d, "listener-peer-busy")
    assert peak <= PER_PEER, f"127.0.0.2 held {peak} listener places"
    assert_on(res, d)
    assert res.seconds < 3.0, res
    assert after > before > 0, (before, after)


def test_stalled_callbacks_do_not_starve_the_listener(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, port: int
) -> None:
    d = start_xvmd("--tcp", f"127.0.0.1:{port}")
    lst = ns_listener(netns, "0.0.0.0", backlog=256)
    udp = ns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    cb = lst.getsockname()[1]
    key = Key(key_file.read_bytes())
    # Callbacks spread over addresses: no more than PER_CALLBACK run to one address and port.
    captured = [
        pyclient.build(
            Op.STATUS,
            "vm-01",
            key,
            address=f"127.0.0.{2 + i // PER_CALLBACK}",
            port=cb,
            seqno=105_000 + i,
        )
        for i in range(MAX_SESSIONS + 8)
    ]
    del key
    held: list[socket.socket] = []
    try:
        for packet in captured:
            udp.sendto(packet, ("127.0.0.1", d.port))
        lst.settimeout(3.0)
        while len(held) < MAX_SESSIONS:  # accepted, never challenged: each holds 10 s
            held.append(lst.accept()[0])
        assert not accepted_within(lst, 0.5)  # the rest dropped: the quota is full
        res = virt_status(netns, port, key_file, "vm-01")
        st = status(d)
    finally:
        for s in [*held, lst, udp]:
            s.close()
    assert_on(res, d)
    assert res.seconds < 3.0, res
    assert st["counters"]["dropped"].get("busy") == 8, st["counters"]


# -- 4: callbacks to addresses nobody should be called at ----------------------------------------


def test_callbacks_to_unusable_addresses_are_never_made(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    lst = ns_listener(netns, "0.0.0.0")  # a connect to 0.0.0.0 would land here
    udp = ns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    cb = lst.getsockname()[1]
    key = Key(key_file.read_bytes())
    addresses = ["0.0.0.0", "225.0.0.12", "255.255.255.255"]
    captured = [
        pyclient.build(Op.OFF, "vm-01", key, address=a, port=cb, seqno=106_000 + i)
        for i, a in enumerate(addresses)
    ]
    del key
    with lst, udp:
        for packet in captured:
            udp.sendto(packet, ("127.0.0.1", d.port))
        called = accepted_within(lst, 1.5)
    assert not called, "xvmd connected back to 0.0.0.0 (this host)"
    assert dropped(d, "bad-callback") == len(addresses)
    assert "callback to an unspecified address (0.0.0.0) refused" in d.log()
    assert "cannot call back" not in d.log()  # no connection even tried
    assert_on(xvm_status(netns, d, key_file, "vm-01"), d)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    """cluster.conf whose only node address is node1's 127.0.0.1 (see test_cluster_conf)."""
    return Deployment(tmp_path / "etc")


def test_callback_to_no_cluster_node_is_never_made(
    start_xvmd: XvmdFactory, netns: Netns, deployment: Deployment
) -> None:
    assert "127.0.0.5" not in deployment.text
    d = start_xvmd_ccs(start_xvmd, deployment)
    service = ns_listener(netns, "0.0.0.0")  # another local service, reachable at 127.0.0.5
    udp = ns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    key = Key(deployment.keys["host1"].read_bytes())
    copies = [  # one request: its first send and two retransmits (fresh random bytes)
        pyclient.build(
            Op.STATUS,
            "node1",
            key,
            address="127.0.0.5",
            port=service.getsockname()[1],
            seqno=107_001,
        )
        for _ in range(3)
    ]
    del key
    line = "requester 127.0.0.5 is no node of cluster"
    with service, udp:
        for packet in copies[:2]:
            udp.sendto(packet, ("127.0.0.1", d.port))
        assert not accepted_within(service, 1.5), "xvmd called back an address of no node"
        assert d.wait_for_log(line, timeout=10), d.log()[-3000:]
        # A retransmit after the report, then a whole housekeeping pass (every 5 s): still
        # one line for the request.
        udp.sendto(copies[2], ("127.0.0.1", d.port))
        time.sleep(6.0)
        assert not accepted_within(service, 0), "xvmd called back an address of no node"
    assert d.log().count(line) == 1, d.log()[-3000:]
    assert dropped(d, "not-a-node") == 3
    assert "cannot call back" not in d.log()
    res = xvm_status(netns, d, deployment.keys["host1"], "node1")  # from node1's 127.0.0.1
    assert res.rc == 0, res.output + d.log()[-3000:]
