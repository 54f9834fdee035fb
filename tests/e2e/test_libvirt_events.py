"""Backend.watch through a real libvirtd: other clients' changes arrive as events, and a lost
event connection is re-opened by ``check_connection`` (announced once) after libvirtd died or
stopped answering.

``test+unix:///default`` inside libvirtd is one state for every client while one stays open,
and it emits lifecycle events for every client's calls; the backend's event connection is one
of those clients. The private libvirtd is the one tests/e2e/test_libvirtd.py starts.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.e2e.test_libvirtd import Libvirtd
from tests.support.harness import Netns
from tests.unit.test_backend_events import Changes
from xvmd.backend import DomainState
from xvmd.backend.libvirt import LibvirtBackend

pytestmark = [pytest.mark.e2e, pytest.mark.libvirtd]

EXTRA_XML = (
    "<domain type='test'><name>extra</name><memory>1024</memory><os><type>hvm</type></os></domain>"
)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Libvirtd]:
    ns = Netns()
    lv = Libvirtd(ns, tmp_path / "libvirtd")
    try:
        lv.start()
        yield lv
    finally:
        lv.kill()
        ns.close()


@pytest.fixture
def backend(daemon: Libvirtd) -> Iterator[LibvirtBackend]:
    b = LibvirtBackend(daemon.uri)
    yield b
    b.close()


def ok(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stdout + res.stderr


def reconnect(backend: LibvirtBackend, timeout: float = 20.0) -> None:
    """``check_connection`` as the daemon's housekeeping calls it, until it succeeds."""
    deadline = time.monotonic() + timeout
    while not backend.check_connection():
        assert time.monotonic() < deadline, f"no reconnect: {backend.last_error}"
        time.sleep(0.2)


def test_other_clients_changes_arrive_as_events(
    daemon: Libvirtd, backend: LibvirtBackend, tmp_path: Path
) -> None:
    changes = Changes()
    assert backend.watch(changes) is True
    xml = tmp_path / "extra.xml"
    xml.write_text(EXTRA_XML)
    steps = [
        ("destroy", "test"),
        ("start", "test"),
        ("define", str(xml)),
        ("undefine", "extra"),
    ]
    for step in steps:
        seen = changes.count
        ok(daemon.virsh(*step))
        assert changes.wait_beyond(seen), f"no event for virsh {' '.join(step)}"
    other = libvirt.open(daemon.uri)  # a client through the daemon, of its own
    try:
        dom = other.lookupByName("test")
        for act in (dom.suspend, dom.resume, dom.destroy):
            seen = changes.count
            act()
            assert changes.wait_beyond(seen), f"no event for {act.__name__}"
    finally:
        other.close()
    assert backend.lookup("test").state is DomainState.SHUTOFF
    backend.unwatch()
    seen = changes.count
    ok(daemon.virsh("start", "test"))
    # A later watcher gets the next event: had the unwatched one been called, it would have
    # been by now (one event thread, in order).
    later = Changes()
    backend.watch(later)
    ok(daemon.virsh("destroy", "test"))
    assert later.wait_beyond(0)
    assert changes.count == seen


def test_killed_libvirtd_event_connection_reopens_and_tells_once(
    daemon: Libvirtd, backend: LibvirtBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xvmd.libvirt")
    changes = Changes()
    assert backend.watch(changes) is True
    assert backend.check_connection()
    assert changes.count == 0
    daemon.kill()  # SIGKILL
    # The close is told at once: whoever keeps state from events stops trusting it now.
    assert changes.wait_beyond(0), "the lost event connection was not told"
    assert not backend.watching()
    assert not backend.check_connection()
    assert changes.count == 1  # nothing more to tell while it is down
    daemon.start()
    reconnect(backend)
    assert changes.count == 2, "re-opened: events may have been missed"
    assert backend.watching()
    assert backend.check_connection()
    assert changes.count == 2  # once
    ok(daemon.virsh("destroy", "test"))
    assert changes.wait_beyond(2), "no events after the reconnect"
    assert "libvirt event connection closed (end of file)" in caplog.text


def test_wedged_libvirtd_is_noticed_by_keepalive(
    daemon: Libvirtd, backend: LibvirtBackend, caplog: pytest.LogCaptureFixture
) -> None:
    assert daemon.proc is not None
    changes = Changes()
    assert backend.watch(changes) is True
    os.kill(daemon.proc.pid, signal.SIGSTOP)  # no answers; the socket stays open
    try:
        deadline = time.monotonic() + 30  # 5 s x 3 pings, and some
        while "keepalive timeout" not in caplog.text:
            assert time.monotonic() < deadline, "keepalive never closed the event connection"
            time.sleep(0.2)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    reconnect(backend)
    assert changes.count == 2  # told at the close by keepalive, and once re-opened
    ok(daemon.virsh("destroy", "test"))
    assert changes.wait_beyond(2)
