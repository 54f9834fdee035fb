"""sd_notify without libsystemd (xvmd/daemon/systemd.py), against a datagram socket standing in
for systemd's: a path under tmp_path, or an abstract ``@name``; a no-op without NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.fakes import NotifySocket
from xvmd.daemon import systemd


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever started the test run (systemd itself, maybe) says nothing here."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["path", "abstract"])
def notify(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotifySocket]:
    if request.param == "path":
        address = str(tmp_path / "notify")
    else:  # as systemd writes it: '@' for the leading NUL; unique per test run
        address = f"@xvmd-test-{os.getpid()}-{tmp_path.name}"
    sock = NotifySocket(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield sock
    sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready("serving") is False
    assert systemd.reloading() is False
    assert systemd.stopping() is False
    assert systemd.watchdog() is False


def test_ready_says_status_and_main_pid(notify: NotifySocket) -> None:
    assert systemd.ready("serving: 225.0.0.12 port 1229") is True
    assert notify.take() == {
        "READY": "1",
        "STATUS": "serving: 225.0.0.12 port 1229",
        "MAINPID": str(os.getpid()),
    }


def test_reloading_carries_the_monotonic_time_of_the_reload(notify: NotifySocket) -> None:
    before = time.monotonic_ns() // 1000
    assert systemd.reloading() is True
    after = time.monotonic_ns() // 1000
    msg = notify.take()
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after  # Type=notify-reload matches on it


def test_stopping_and_watchdog(notify: NotifySocket) -> None:
    assert systemd.stopping() is True
    assert systemd.stopping("going away") is True
    assert systemd.watchdog() is True
    assert [notify.take() for _ in range(3)] == [
        {"STOPPING": "1", "STATUS": "stopping: draining requests in flight"},
        {"STOPPING": "1", "STATUS": "going away"},
        {"WATCHDOG": "1"},
    ]


def test_each_call_is_one_datagram_in_the_order_sent(notify: NotifySocket) -> None:
    # Fewer than net.unix.max_dgram_qlen (10 by default): beyond it a send waits for a reader.
    for n in range(8):
        systemd.notify(f"STATUS=step {n}")
    assert [notify.take()["STATUS"] for _ in range(8)] == [f"step {n}" for n in range(8)]


@pytest.mark.parametrize("where", ["nothing there", "a stream socket", "a regular file"])
def test_an_unusable_notify_socket_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "notify"
    keep: socket.socket | None = None
    if where == "a stream socket":
        keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.bind(str(path))
        keep.listen()
    elif where == "a regular file":
        path.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        assert systemd.ready("serving") is False  # the daemon runs on regardless
    finally:
        if keep is not None:
            keep.close()


def test_an_abstract_address_that_nobody_bound_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@xvmd-test-nobody-{os.getpid()}")
    assert systemd.watchdog() is False


# -- the watchdog interval -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        (None, None, None),  # no watchdog configured
        ("", None, None),
        ("2000000", None, 1.0),  # half of WatchdogSec
        ("30000000", "self", 15.0),  # meant for this process
        ("30000000", "1", None),  # meant for another process (a parent shell)
        ("50000", None, 0.05),  # never below 50 ms
        ("1", None, 0.05),
        ("soon", None, None),  # unreadable: no pings rather than a crash
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, interval: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert systemd.watchdog_interval() == interval
