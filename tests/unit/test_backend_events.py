"""Backend.watch: the fake's change events, then libvirt's in-process test driver.

The test driver emits lifecycle events for its own calls. ``test:///default`` is one state
shared by every connection of the process while one is open (a second ``libvirt.open`` sees
and announces the backend's changes, and the other way round); ``test://<file>`` is a state
per connection, which is why the backend watches it on its one shared connection.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xvmd.backend import BackendError, DomainInfo, DomainState
from xvmd.backend.fake import FakeBackend

S = DomainState
UUID_A = "aaaaaaaa-0000-4000-8000-00000000000a"
UUID_B = "bbbbbbbb-0000-4000-8000-00000000000b"
WAIT = 5.0  # seconds: the most any expected notification may take


class Changes:
    """A ``changed`` callback that counts its calls and lets a test wait for the next one."""

    def __init__(self, probe: Callable[[], object] | None = None) -> None:
        self.count = 0
        self.threads: list[str] = []
        self.seen: list[object] = []  # what ``probe`` returned at each call
        self._probe = probe
        self._lock = threading.Lock()
        self._signal = threading.Condition(self._lock)

    def __call__(self) -> None:
        seen = self._probe() if self._probe is not None else None
        with self._lock:
            self.count += 1
            self.threads.append(threading.current_thread().name)
            self.seen.append(seen)
            self._signal.notify_all()

    def wait_beyond(self, count: int, timeout: float = WAIT) -> bool:
        """True once more than ``count`` calls were made, within ``timeout`` seconds."""
        with self._lock:
            return self._signal.wait_for(lambda: self.count > count, timeout)


# -- the fake -------------------------------------------------------------------------------------


def two_domains() -> list[DomainInfo]:
    return [
        DomainInfo("a", UUID_A, S.RUNNING),
        DomainInfo("b", UUID_B, S.RUNNING, persistent=False),
    ]


def states(backend: FakeBackend) -> dict[str, S]:
    return {d.name: d.state for d in backend.list_domains()}


def test_fake_notifies_after_each_change() -> None:
    fake = FakeBackend(two_domains())
    changes = Changes(lambda: states(fake))
    assert fake.watch(changes) is True
    fake.destroy(UUID_A)
    fake.start(UUID_A)
    fake.set_state(UUID_A, S.PAUSED)
    fake.resume(UUID_A)
    saved = fake.definition(UUID_B)  # reads only: no notification
    fake.destroy(UUID_B)  # transient: gone
    fake.create_transient(saved)
    fake.add_domain(DomainInfo("c", "cccccccc-0000-4000-8000-00000000000c", S.SHUTOFF))
    fake.remove_domain(UUID_A)
    # Each call came after its change was made, in the caller's thread.
    assert changes.seen == [
        {"a": S.SHUTOFF, "b": S.RUNNING},
        {"a": S.RUNNING, "b": S.RUNNING},
        {"a": S.PAUSED, "b": S.RUNNING},
        {"a": S.RUNNING, "b": S.RUNNING},
        {"a": S.RUNNING},
        {"a": S.RUNNING, "b": S.RUNNING},
        {"a": S.RUNNING, "b": S.RUNNING, "c": S.SHUTOFF},
        {"b": S.RUNNING, "c": S.SHUTOFF},
    ]
    assert set(changes.threads) == {threading.current_thread().name}


def test_fake_failed_calls_change_nothing_and_notify_nothing() -> None:
    fake = FakeBackend(two_domains())
    changes = Changes()
    fake.watch(changes)
    with pytest.raises(BackendError):
        fake.start(UUID_A)  # already running
    fake.fail["destroy"] = "permission denied"
    with pytest.raises(BackendError):
        fake.destroy(UUID_A)
    fake.available = False
    with pytest.raises(BackendError):
        fake.resume(UUID_A)
    assert changes.count == 0


def test_fake_unwatch_and_close_stop_the_notifications() -> None:
    fake = FakeBackend(two_domains())
    changes = Changes()
    fake.watch(changes)
    fake.destroy(UUID_A)
    fake.unwatch()
    fake.unwatch()  # idempotent
    fake.start(UUID_A)
    fake.watch(changes)
    fake.close()
    fake.destroy(UUID_A)
    assert changes.count == 1


def test_fake_without_events_asks_for_polling() -> None:
    fake = FakeBackend(two_domains(), events=False)
    changes = Changes()
    assert fake.watch(changes) is False
    fake.destroy(UUID_A)
    fake.set_state(UUID_B, S.CRASHED)
    assert changes.count == 0


# -- libvirt's test driver, in process ------------------------------------------------------------

libvirt = pytest.importorskip("libvirt")

from xvmd.backend.libvirt import LibvirtBackend  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "domains.xml"
DEFAULT_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
EVENT_THREAD = "libvirt-events"


@pytest.fixture
def lv_default() -> Iterator[LibvirtBackend]:
    # test:///default is reset when the last connection of the process closes: closing keeps
    # the tests independent.
    backend = LibvirtBackend("test:///default")
    yield backend
    backend.close()


def event_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == EVENT_THREAD]


def test_default_driver_announces_the_backends_own_changes(lv_default: LibvirtBackend) -> None:
    changes = Changes()
    assert lv_default.watch(changes) is True
    lv_default.destroy(DEFAULT_UUID)
    assert changes.wait_beyond(0), "no event for a destroy"
    seen = changes.count
    lv_default.start(DEFAULT_UUID)
    assert changes.wait_beyond(seen), "no event for a start"
    assert lv_default.check_connection()  # nothing was lost: no call from this thread
    assert set(changes.threads) == {EVENT_THREAD}
    assert lv_default.lookup("test").state is S.RUNNING


def test_default_driver_is_shared_by_the_connections_of_the_process(
    lv_default: LibvirtBackend,
) -> None:
    changes = Changes()
    lv_default.watch(changes)
    other = libvirt.open("test:///default")
    try:
        other.lookupByName("test").destroy()
        assert changes.wait_beyond(0), "another connection's destroy was not announced"
        assert lv_default.lookup("test").state is S.SHUTOFF
    finally:
        other.close()


def test_file_driver_is_watched_on_the_backends_own_connection() -> None:
    backend = LibvirtBackend(f"test://{FIXTURE}")
    changes = Changes()
    other = libvirt.open(f"test://{FIXTURE}")  # a world of its own
    try:
        assert backend.watch(changes) is True
        other.lookupByName("vm-02").destroy()
        backend.destroy(backend.lookup("vm-01").uuid)
        assert changes.wait_beyond(0)
        assert backend.lookup("vm-02").state is S.RUNNING  # the other world's change
        assert changes.count == 1  # ...and no event from it
    finally:
        other.close()
        backend.close()


def test_unwatch_stops_the_notifications(lv_default: LibvirtBackend) -> None:
    first = Changes()
    lv_default.watch(first)
    lv_default.destroy(DEFAULT_UUID)
    assert first.wait_beyond(0)
    lv_default.unwatch()
    lv_default.unwatch()  # idempotent
    seen = first.count
    lv_default.start(DEFAULT_UUID)
    # Events are dispatched in order by the one event thread: once a later event reached a new
    # watcher, the start's event would have reached the first one already.
    second = Changes()
    assert lv_default.watch(second) is True
    lv_default.destroy(DEFAULT_UUID)
    assert second.wait_beyond(0)
    assert first.count == seen
    assert second.count == 1


def test_a_second_watch_replaces_the_callback(lv_default: LibvirtBackend) -> None:
    first, second = Changes(), Changes()
    lv_default.watch(first)
    lv_default.watch(second)
    lv_default.destroy(DEFAULT_UUID)
    assert second.wait_beyond(0)
    lv_default.unwatch()
    assert first.count == 0


def test_watch_and_close_leave_one_parked_event_thread() -> None:
    for uri, name in (("test:///default", "test"), (f"test://{FIXTURE}", "vm-03")):
        backend = LibvirtBackend(uri)
        uuid = backend.lookup(name).uuid
        for _ in range(3):
            changes = Changes()
            assert backend.watch(changes)
            backend.destroy(uuid)
            assert changes.wait_beyond(0)
            backend.start(uuid)
            backend.unwatch()
        backend.watch(Changes())
        backend.close()
        assert len(event_threads()) == 1
    (thread,) = event_threads()
    assert thread.daemon
    assert parked(thread), "the event thread does not wait: it spins"


def parked(thread: threading.Thread, timeout: float = WAIT) -> bool:
    """The thread waits in poll(2) without a timeout (x86-64 Linux; elsewhere: alive)."""
    path = Path(f"/proc/self/task/{thread.native_id}/syscall")
    if platform.machine() != "x86_64" or not path.exists():
        return thread.is_alive()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = path.read_text().split()
        # poll(fds, nfds, timeout) is syscall 7; a timeout of -1 shows as 0xffffffff
        if fields[:1] == ["7"] and int(fields[3], 16) & 0xFFFFFFFF == 0xFFFFFFFF:
            return True
        time.sleep(0)
    return False


# -- losing and regaining the event connection (a dedicated one, opened through ``opener``) ------


class Severable:
    """A connection that stops answering when ``severed`` (libvirtd gone or wedged)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.severed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def isAlive(self) -> int:
        return 0 if self.severed else int(self.conn.isAlive())


class Opener:
    """Opens ``test:///default`` for a backend that believes its URI is remote, so it watches
    on a dedicated connection; ``down`` makes every open fail as an absent libvirtd would."""

    def __init__(self, missing: Path) -> None:
        self.missing = missing
        self.down = False
        self.opened: list[Severable] = []

    def __call__(self, _uri: str) -> Severable:
        if self.down:
            libvirt.open(f"test://{self.missing}")  # raises a real libvirtError
            raise AssertionError("unreachable")
        conn = Severable(libvirt.open("test:///default"))
        self.opened.append(conn)
        return conn


def test_a_lost_event_connection_is_reopened_and_announced_once(tmp_path: Path) -> None:
    opener = Opener(tmp_path / "missing.xml")
    backend = LibvirtBackend("remote+fake:///", opener=opener)
    changes = Changes()
    try:
        assert backend.watch(changes) is True
        (event_conn,) = opener.opened  # watch opened it, before any pool connection
        assert backend.check_connection()
        assert changes.count == 0
        event_conn.severed = True  # the event connection dies; the pool's live on
        assert backend.check_connection()
        assert changes.count == 1  # re-opened: events may have been missed
        assert changes.threads == [threading.current_thread().name]
        assert backend.check_connection()
        assert changes.count == 1  # once
        backend.destroy(DEFAULT_UUID)
        assert changes.wait_beyond(1), "no events after the reconnect"
        assert changes.threads[1:] == [EVENT_THREAD]
    finally:
        backend.close()


def default_state_was_reset() -> bool:
    """No connection of the process is left: test:///default starts afresh."""
    conn = libvirt.open("test:///default")
    try:
        return bool(conn.lookupByName("test").isActive())
    finally:
        conn.close()


@pytest.mark.parametrize("dedicated", [False, True], ids=["shared", "dedicated"])
def test_close_lets_go_of_every_connection(dedicated: bool, tmp_path: Path) -> None:
    # A registered callback holds a reference to its connection: closed without deregistering
    # first, the connection (and here the domains' state) would live on.
    if dedicated:
        backend = LibvirtBackend("remote+fake:///", opener=Opener(tmp_path / "missing.xml"))
    else:
        backend = LibvirtBackend("test:///default")
    changes = Changes()
    assert backend.watch(changes)
    backend.destroy(DEFAULT_UUID)
    assert changes.wait_beyond(0)
    backend.close()
    assert default_state_was_reset()


def test_watch_while_unreachable_subscribes_when_the_hypervisor_is_back(tmp_path: Path) -> None:
    opener = Opener(tmp_path / "missing.xml")
    opener.down = True
    backend = LibvirtBackend("remote+fake:///", opener=opener)
    changes = Changes()
    try:
        assert backend.watch(changes) is True  # unreachable is not "no events"
        assert not backend.check_connection()
        opener.down = False
        assert backend.check_connection()
        assert changes.count == 1
        backend.destroy(DEFAULT_UUID)
        assert changes.wait_beyond(1)
    finally:
        backend.close()


class NoEvents:
    """A connection whose driver has no domain events."""

    def __init__(self, conn: Any, error: Exception) -> None:
        self.conn = conn
        self.error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def domainEventRegisterAny(self, *_args: Any) -> int:
        raise self.error


def test_a_driver_without_events_asks_for_polling() -> None:
    probe = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError) as caught:
            probe.setKeepAlive(5, 3)  # the test driver has no keepalive: a real NO_SUPPORT
        assert caught.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        backend = LibvirtBackend(
            "remote+fake:///",
            opener=lambda _uri: NoEvents(libvirt.open("test:///default"), caught.value),
        )
        changes = Changes()
        assert backend.watch(changes) is False
        backend.destroy(DEFAULT_UUID)
        assert backend.check_connection()
        assert changes.count == 0
        backend.close()
    finally:
        probe.close()
