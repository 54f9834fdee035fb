"""Fixtures of the root-free daemon tests: systemd's notify socket and the run directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.fakes import NotifySocket
from xvmd.daemon import paths


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A socket standing in for systemd's: what the daemon tells it can be awaited, so tests
    wait on READY instead of polling; no watchdog unless a test asks for one."""
    sock = NotifySocket(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    yield sock
    sock.close()


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where ``xvmd status`` looks for daemons when not told which."""
    path = tmp_path / "run"
    path.mkdir()
    monkeypatch.setenv(paths.RUN_DIR_ENV, str(path))
    return path
