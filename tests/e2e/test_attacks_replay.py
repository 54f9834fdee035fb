"""Replays of captured fence requests, replay floods and unsigned requests, against the real
daemon, by a raw attacking client that holds no key.

The attacker lives in the test's private network namespace (its sockets are made by a thread
that entered it, ``ns_socket``). Where it matters, packets are really captured from the stock
``fence_xvm`` while it runs: xvmd binds its UDP port without SO_REUSEADDR, so a second UDP
socket cannot share the port; the attacker sniffs ``lo`` with a packet socket instead, which
sees exactly the datagrams xvmd receives. Otherwise packets are built with the key before the
attack, standing for sniffed ones.

1. The ``off`` packets of five real runs on vm-01 (each followed by a real ``on``), replayed at
   2,000/s once the duplicate window is over, while the real client runs ``status`` in a loop
   on the same callback port: the replays are refused (counter ``replayed``, one log line),
   none is called back, vm-01 stays on. Before the fix the daemon called the replays back, a
   status client took the call, answered the challenge, and vm-01 went off.
   The same with captured ``status`` packets of a shut-off VM: no status run of the running
   vm-02 is ever told OFF.
2. One exact replay of a captured ``off`` 11 s later (duplicate window over): no connect-back
   to the attacker's listener at the packet's callback port, vm-01 stays on. The same right
   after the daemon restarted (handled power actions are read back from the audit trail).
3. Floods: one status packet with a closed callback port at 5,000/s, and 300 fresh copies of
   one request (connect attempts bounded by the 1 s back-off, cheap for the daemon, the real
   client served meanwhile); 600 distinct
   packets naming one unreachable callback (at most ``per_callback`` sessions held, the real
   client's ``off`` served at once).
4. Unsigned requests (``--hash none``) with two cluster.conf devices: with ``--auth none`` they
   reach every served device; with ``--auth sha256`` they are dropped before any callback
   (which key would answer?); with one device (``-D``) its key answers and scopes them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.support import pyclient
from tests.support.harness import FIXTURES, ClientResult, Netns, Xvmd, fence_xvm, parse_list
from tests.support.inside import (
    closed_port,
    cpu_seconds,
    dropped,
    ns_socket,
    sockets_to,
    status,
    wait_until,
)
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import REQUEST_SIZE, HashType, Op

try:
    from xvmd.core.limits import Limits

    PER_CALLBACK = Limits().per_callback
except ImportError:  # the code before the per-callback quota: the tests must still run there
    PER_CALLBACK = 4

pytestmark = pytest.mark.e2e

GROUP = "225.0.0.12"
WINDOW = 10.0  # protocol.history.DUPLICATE_WINDOW
BACKOFF = 1.0  # protocol.history.CALLBACK_BACKOFF
CONNECT = 5.0  # protocol.session.CONNECT_TIMEOUT
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
CAPTURED_RUNS = 5
OFF_LINE = re.compile(r" off 'vm-01'.* -> ")  # the one log line per answered off of vm-01

# -- the attacker's tools ------------------------------------------------------------------------


class Sniffer:
    """Captures the 176-byte datagrams to UDP ``port`` crossing the namespace's ``lo``."""

    def __init__(self, netns: Netns, port: int) -> None:
        self.port = port
        self.captured: list[tuple[float, bytes]] = []  # (monotonic time, payload)
        self._sock = ns_socket(netns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self._sock.bind(("lo", ETH_P_IP))
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] == PACKET_OUTGOING or data[9] != socket.IPPROTO_UDP:
                continue  # lo shows each packet twice: keep the received copy
            ihl = (data[0] & 0x0F) * 4
            payload = data[ihl + 8 :]
            dport = int.from_bytes(data[ihl + 2 : ihl + 4], "big")
            if dport == self.port and len(payload) == REQUEST_SIZE:
                self.captured.append((time.monotonic(), payload))

    def requests(self, op: Op) -> list[tuple[float, bytes]]:
        return [(t, p) for t, p in self.captured if p[0] == op]

    def __enter__(self) -> Sniffer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)  # the last datagrams may still be on their way up
        self._stop.set()
        self._thread.join()
        self._sock.close()


class Flood:
    """Sends ``packets`` to the multicast group at ``rate`` per second for ``seconds``, from a
    thread, as a sender on the guests' network would: each packet in turn, for an equal share
    of the time (one after another, so that each gets its own chances)."""

    def __init__(
        self, netns: Netns, packets: list[bytes], port: int, rate: float, seconds: float
    ) -> None:
        self.packets, self.dest, self.rate, self.seconds = packets, (GROUP, port), rate, seconds
        self.sent = 0
        self.started = self.ended = 0.0
        self.done = threading.Event()
        self._sock = ns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
        )
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.started = time.monotonic()
        n = len(self.packets)
        while (elapsed := time.monotonic() - self.started) < self.seconds:
            packet = self.packets[min(int(elapsed * n / self.seconds), n - 1)]
            while self.sent < int(elapsed * self.rate):
                self._sock.sendto(packet, self.dest)
                self.sent += 1
            time.sleep(0.002)
        self.ended = time.monotonic()
        self.done.set()

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._thread.join()
        self._sock.close()


def send(netns: Netns, packet: bytes, dest: tuple[str, int]) -> None:
    with ns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.sendto(packet, dest)


def full_listener(netns: Netns) -> tuple[socket.socket, list[socket.socket]]:
    """A listener that never accepts, its queue filled: further SYNs are dropped silently."""
    full = ns_socket(netns)
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        s = ns_socket(netns)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(full.getsockname())
        fillers.append(s)
    time.sleep(0.2)  # let the fillers occupy the accept queue
    return full, fillers


# -- the daemon as seen from outside -------------------------------------------------------------


def accounted(d: Xvmd) -> int:
    """Requests the daemon has dealt with so far: held in sessions or dropped."""
    st = status(d)
    return int(st["active_sessions"]) + sum(int(n) for n in st["counters"]["dropped"].values())


def xvm(netns: Netns, d: Xvmd, key: Path, *args: str) -> ClientResult:
    """The stock client against ``d`` (its callback port is the daemon's port, as by default)."""
    return fence_xvm(netns, "-a", GROUP, "-p", str(d.port), "-k", str(key), "-t", "4", *args)


def capture_off(netns: Netns, d: Xvmd, key: Path, runs: int = 1) -> tuple[float, list[bytes]]:
    """Power vm-01 off with the real client while sniffing, then on again, ``runs`` times (each
    run draws its own seqno). Returns when the last off packet was seen, and the off packets."""
    offs: list[tuple[float, bytes]] = []
    for _ in range(runs):
        with Sniffer(netns, d.port) as sniff:
            off = xvm(netns, d, key, "-o", "off", "-H", "vm-01")
        assert off.rc == 0, off.output + d.log()
        assert sniff.requests(Op.OFF), f"nothing captured: {len(sniff.captured)} datagrams"
        offs += sniff.requests(Op.OFF)
        assert xvm(netns, d, key, "-o", "status", "-H", "vm-01").rc == 2  # it really went off
        on = xvm(netns, d, key, "-o", "on", "-H", "vm-01")
        assert on.rc == 0, on.output + d.log()
    return offs[-1][0], [p for _, p in offs]


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def called_back(lst: socket.socket, wait: float) -> bool:
    """Whether anything connects to ``lst`` within ``wait`` seconds (it is hung up on at once)."""
    lst.settimeout(wait)
    try:
        conn, _ = lst.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


# -- 1. replay against a live client -------------------------------------------------------------


def status_loop(netns: Netns, d: Xvmd, key: Path, flood: Flood) -> list[ClientResult]:
    """Harmless status runs of vm-02, one after another, for as long as the flood lasts: each
    run listens on the callback port the captured off packets name."""
    runs = []
    while not flood.done.is_set():
        runs.append(xvm(netns, d, key, "-o", "status", "-H", "vm-02"))
    return runs


def test_replayed_off_never_reaches_a_live_client(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    # Several captured runs, replayed one after another: the code before the fix recorded a
    # replay once its callback connected, even when it reached a status client that had taken
    # its own callback first, and then ignored that seqno for 10 s. Each seqno is one chance.
    seen, offs = capture_off(netns, d, key_file, runs=CAPTURED_RUNS)
    sleep_until(seen + WINDOW + 0.5)  # past the duplicate window: only replay protection is left
    with Flood(netns, offs, d.port, rate=2000, seconds=5.0) as flood:
        runs = status_loop(netns, d, key_file, flood)
    time.sleep(0.3)  # the daemon catches up with the last datagrams
    after = xvm(netns, d, key_file, "-o", "status", "-H", "vm-01")
    drops = status(d)["counters"]["dropped"]
    replayed = drops.get("replayed", 0)
    log = d.log()
    codes = [r.rc for r in runs]
    print(
        f"{flood.sent} replays of {len(offs)} captured packet(s); {len(runs)} status runs, "
        f"exit codes {sorted(set(codes))}; dropped: {drops}"
    )
    # A status client that took a replayed off's callback would have powered vm-01 off.
    assert after.rc == 0 and "Status: ON" in after.output, f"vm-01 after: {after.output}"
    assert len(OFF_LINE.findall(log)) == CAPTURED_RUNS, "a replayed off of vm-01 was answered"
    # No replay may even be called back (refused while no client listened, or cut off).
    assert "callback-failed" not in drops and "auth-failed" not in drops, drops
    assert len(runs) >= 10, f"only {len(runs)} status runs: the replay had no live target"
    for r in runs:
        assert r.rc == 0 or (r.rc == 1 and "Timed out" in r.output), r.output
    assert codes.count(0) >= len(runs) - 2, codes
    assert replayed >= 0.9 * flood.sent, (replayed, flood.sent)
    assert 1 <= log.count("replayed off 'vm-01'") <= 3  # rate-limited, not one per packet


def capture_status(
    netns: Netns, d: Xvmd, key: Path, vm: str, runs: int
) -> tuple[float, list[bytes]]:
    """``runs`` real status runs of ``vm`` while sniffing: when the last was seen, the packets."""
    seen: list[tuple[float, bytes]] = []
    for _ in range(runs):
        with Sniffer(netns, d.port) as sniff:
            assert xvm(netns, d, key, "-o", "status", "-H", vm).rc == 2  # shut off
        seen += sniff.requests(Op.STATUS)
    assert seen, "nothing captured"
    return seen[-1][0], [p for _, p in seen]


def test_replayed_status_never_answers_a_live_clients_other_question(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    """Read-only replays matter too: a replayed ``status off-1`` called back while the real
    client waits for the answer to ``status vm-02`` on that port would tell it vm-02 is OFF
    (a running VM reported fenced). Before the fix that happened; now no replay is called back."""
    d = start_xvmd()
    seen, captured = capture_status(netns, d, key_file, "off-1", runs=CAPTURED_RUNS)
    sleep_until(seen + WINDOW + 0.5)
    with Flood(netns, captured, d.port, rate=2000, seconds=5.0) as flood:
        runs = status_loop(netns, d, key_file, flood)
    drops = status(d)["counters"]["dropped"]
    codes = [r.rc for r in runs]
    print(
        f"{flood.sent} replays; {len(runs)} status runs of vm-02, exit codes {sorted(set(codes))}"
    )
    assert len(runs) >= 10, f"only {len(runs)} status runs: the replay had no live target"
    assert 2 not in codes, "a running VM was reported OFF to a live client"
    for r in runs:
        assert r.rc == 0 or (r.rc == 1 and "Timed out" in r.output), r.output
    assert "callback-failed" not in drops and "auth-failed" not in drops, drops
    assert drops.get("replayed", 0) >= 0.9 * flood.sent, drops


# -- 2. one exact replay after the duplicate window ----------------------------------------------


def test_exact_replay_after_the_duplicate_window_is_refused(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    seen, offs = capture_off(netns, d, key_file)
    # The packets call back 127.0.0.1 at the daemon's port: the attacker listens there itself.
    lst = ns_socket(netns)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the client's TIME_WAIT
    lst.bind(("127.0.0.1", d.port))
    lst.listen(4)
    try:
        sleep_until(seen + WINDOW + 1.0)
        for packet in offs:
            send(netns, packet, (GROUP, d.port))
        replay_called_back = called_back(lst, 3.0)
    finally:
        lst.close()
    assert not replay_called_back, "the daemon called back for a replayed off"
    assert dropped(d, "replayed") == len(offs)
    seqno = int.from_bytes(offs[0][104:108], "little")
    assert f"replayed off 'vm-01' seqno {seqno} from 127.0.0.1 dropped" in d.log()
    assert xvm(netns, d, key_file, "-o", "status", "-H", "vm-01").rc == 0  # still on
    # The guard holds these bytes only: an honest new run (new seqno) is served as ever.
    assert xvm(netns, d, key_file, "-o", "off", "-H", "vm-01").rc == 0
    assert len(OFF_LINE.findall(d.log())) == 2


def test_a_restart_does_not_reopen_the_replay_window(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    """Handled power actions are read back from the audit trail: a daemon restarted (same
    audit file) still refuses a replay of an off the previous one carried out."""
    first = start_xvmd()
    _seen, offs = capture_off(netns, first, key_file)
    assert first.stop() == 0
    d = start_xvmd(port=first.port)  # the same port, so the same audit file
    # the off and the on that followed it
    assert d.wait_for_log("replay protection: 2 power actions of the last hour read from")
    lst = ns_socket(netns)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the client's TIME_WAIT
    lst.bind(("127.0.0.1", d.port))
    lst.listen(4)
    try:
        for packet in offs:
            send(netns, packet, (GROUP, d.port))
        replay_called_back = called_back(lst, 3.0)
    finally:
        lst.close()
    assert not replay_called_back, "the restarted daemon called back for a replayed off"
    assert dropped(d, "replayed") == len(offs)
    assert xvm(netns, d, key_file, "-o", "status", "-H", "vm-01").rc == 0  # still on


# -- 3. replay floods ----------------------------------------------------------------------------


def test_flood_to_a_closed_callback_is_bounded_by_the_backoff(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    """One captured status packet at 5,000/s (its exact bytes: called back once, then refused)
    and, as the worst a capture can hold, 300 copies of one request with fresh random bytes
    (a client's retransmits): at most one connect-back per 1 s back-off."""
    d = start_xvmd()
    assert d.proc is not None
    key = Key(key_file.read_bytes())
    dead = closed_port(netns)
    one = pyclient.build(Op.STATUS, "vm-01", key, port=dead, seqno=31_001)
    copies = [pyclient.build(Op.STATUS, "vm-01", key, port=dead, seqno=31_002) for _ in range(300)]
    del key
    seconds = 3.0
    cpu0 = cpu_seconds(d.proc.pid)
    with Flood(netns, [one, *copies], d.port, rate=5000, seconds=seconds) as flood:
        time.sleep(1.0)
        real = xvm(netns, d, key_file, "-o", "status", "-H", "vm-02")
        during = not flood.done.is_set()
        flood.done.wait(seconds + 5)
    time.sleep(0.3)  # the daemon catches up with the last datagrams
    cpu = cpu_seconds(d.proc.pid) - cpu0
    drops = status(d)["counters"]["dropped"]
    failed, backoff = drops.get("callback-failed", 0), drops.get("callback-backoff", 0)
    print(
        f"{flood.sent} packets in {flood.ended - flood.started:.2f}s: xvmd used {cpu:.2f}s "
        f"CPU; callback-failed {failed}, callback-backoff {backoff}, "
        f"duplicate {drops.get('duplicate', 0)}; real client {real.seconds:.2f}s"
    )
    assert real.rc == 0 and "Status: ON" in real.output, real.output
    assert during and real.seconds < 2.0, real.seconds  # served on its first attempt
    # The single packet: one callback. The copies: one per back-off while they last.
    assert 2 <= failed <= 1 + seconds / BACKOFF + 3, failed
    assert backoff >= 100, backoff  # most fresh copies met the back-off
    assert failed + backoff + drops.get("duplicate", 0) >= 0.9 * flood.sent
    assert d.log().count("cannot call back") <= 2
    assert cpu < seconds / 2, f"xvmd used {cpu:.2f}s of CPU in a {seconds}s flood"


def test_many_requests_to_one_callback_hold_few_sessions(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    assert d.proc is not None
    key = Key(key_file.read_bytes())
    n = 600
    full, fillers = full_listener(netns)
    full_port = full.getsockname()[1]
    packets = [
        pyclient.build(Op.STATUS, "vm-01", key, port=full_port, seqno=100_000 + i) for i in range(n)
    ]
    try:
        with ns_socket(netns, socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for p in packets:
                udp.sendto(p, ("127.0.0.1", d.port))
        wait_until(lambda: accounted(d) >= n, 3.0)  # every packet read: held or dropped
        held = max(sockets_to(d.proc.pid, full_port) for _ in range(5))
        st = status(d)
        real = xvm(netns, d, key_file, "-o", "off", "-H", "vm-03")
        ended = wait_until(lambda: status(d)["active_sessions"] == 0, CONNECT + 3)
    finally:
        for s in [*fillers, full]:
            s.close()
    print(
        f"{held} connect-backs held, {st['active_sessions']} sessions; real off in "
        f"{real.seconds:.2f}s; the held ones ended {ended:.1f}s later"
    )
    assert real.rc == 0, real.output + d.log()[-2000:]
    assert real.seconds < 2.0, real.seconds  # not queued behind the unreachable callbacks
    assert st["active_sessions"] == PER_CALLBACK, st
    assert held == PER_CALLBACK
    assert st["counters"]["dropped"].get("callback-busy") == n - PER_CALLBACK
    assert d.log().count(f"call back 127.0.0.1 port {full_port}:") <= 2  # rate-limited
    assert xvm(netns, d, key_file, "-o", "status", "-H", "vm-03").rc == 2  # the off was real


# -- 4. unsigned requests ------------------------------------------------------------------------


@pytest.fixture
def two_devices(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """fixtures/ccs/two-host.conf: xvm-host1 (node1 = vm-01, node2 = vm-02) and xvm-host2
    (node3 = vm-03, node4 = vm-04), both keys on this host; node1 sends from 127.0.0.1."""
    root = tmp_path / "etc"
    root.mkdir()
    keys = {}
    for host in ("host1", "host2"):
        keys[host] = root / f"{host}.key"
        shutil.copy(FIXTURES / "keys" / f"{host}.key", keys[host])
        keys[host].chmod(0o600)
    text = (FIXTURES / "ccs" / "two-host.conf").read_text().replace("../keys/", f"{root}/")
    text = text.replace(
        '<clusternode name="node1" nodeid="1">',
        '<clusternode name="node1" nodeid="1"><altname name="127.0.0.1"/>',
    )
    (root / "cluster.conf").write_text(text)
    return root / "cluster.conf", keys


def unsigned(netns: Netns, d: Xvmd, key: Path, auth: str, *args: str) -> ClientResult:
    return xvm(netns, d, key, "-c", "none", "-C", auth, *args)


def test_unsigned_without_auth_reaches_every_served_device(
    start_xvmd: XvmdFactory, netns: Netns, two_devices: tuple[Path, dict[str, Path]]
) -> None:
    conf, keys = two_devices
    d = start_xvmd("-f", str(conf), "--hash", "none", "--auth", "none", no_ccs=False)
    assert "serving device xvm-host2" in d.log()
    k = keys["host1"]  # read by nobody: nothing is signed or answered
    node3 = unsigned(netns, d, k, "none", "-o", "status", "-H", "node3")
    assert node3.rc == 0 and "Status: ON" in node3.output, node3.output + d.log()
    assert unsigned(netns, d, k, "none", "-o", "status", "-H", "node1").rc == 0
    listed = unsigned(netns, d, k, "none", "-o", "list")
    assert sorted(parse_list(listed.stdout)) == ["vm-01", "vm-02", "vm-03", "vm-04"]
    # Every served device, and nothing beyond: a VM of no node is still refused.
    refused = unsigned(netns, d, k, "none", "-o", "off", "-H", "vm-05")
    assert refused.rc == 3 and "Permission denied" in refused.output


def test_unsigned_with_auth_and_two_keys_is_dropped_before_any_callback(
    start_xvmd: XvmdFactory, netns: Netns, two_devices: tuple[Path, dict[str, Path]]
) -> None:
    conf, keys = two_devices
    d = start_xvmd("-f", str(conf), "--hash", "none", "--auth", "sha256", no_ccs=False)
    lst = ns_socket(netns)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    try:
        cb = lst.getsockname()[1]
        packet = pyclient.build(Op.STATUS, "node1", Key(b"-"), hashtype=HashType.NONE, port=cb)
        send(netns, packet, (GROUP, d.port))
        unsigned_called_back = called_back(lst, 2.0)
    finally:
        lst.close()
    assert not unsigned_called_back, "an unsigned request was called back: which key answers?"
    # The real client holding the first device's key is not served either.
    args = ["-a", GROUP, "-p", str(d.port), "-k", str(keys["host1"]), "-t", "2", "-r", "10"]
    res = fence_xvm(netns, *args, "-c", "none", "-C", "sha256", "-o", "status", "-H", "node1")
    assert res.rc == 1 and "Timed out" in res.output, res.output
    assert dropped(d, "unsigned-ambiguous") >= 2
    assert "--auth sha256 needs a key for the challenge, and 2 devices' keys" in d.log()


def test_unsigned_with_auth_and_one_device_is_scoped_to_it(
    start_xvmd: XvmdFactory, netns: Netns, two_devices: tuple[Path, dict[str, Path]]
) -> None:
    conf, keys = two_devices
    d = start_xvmd(
        "-f", str(conf), "-D", "xvm-host2", "--hash", "none", "--auth", "sha256", no_ccs=False
    )
    k = keys["host2"]
    mine = unsigned(netns, d, k, "sha256", "-o", "status", "-H", "node3")
    assert mine.rc == 0 and "Status: ON" in mine.output, mine.output + d.log()
    other = unsigned(netns, d, k, "sha256", "-o", "off", "-H", "node1")
    assert other.rc == 3 and "Permission denied" in other.output, other.output
    assert unsigned(netns, d, k, "sha256", "-o", "status", "-H", "vm-01").rc == 3
    # The other device's key cannot answer this device's challenge.
    wrong = unsigned(netns, d, keys["host1"], "sha256", "-o", "status", "-H", "node3")
    assert wrong.rc != 0, wrong.output
