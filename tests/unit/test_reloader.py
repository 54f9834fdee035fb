"""Live reload machinery: the debounce waits for quiet, one failed reload never ends reloading,
loads cannot hold up the event loop, and symlinked files are watched where they really are."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import ccs
import ccs.source
from ccs.watch import Watcher, hops
from tests.support.harness import FIXTURES
from tests.unit.fakes import NotifySocket
from xvmd.daemon.reloader import Reloader, in_daemon_thread, quiet_period


class VirtualTime:
    """The debounce's clock and sleep: time moves only when it sleeps, and ``events`` (file
    events at virtual times) set the wake-up event as the sleep passes them."""

    def __init__(self, wake: asyncio.Event, events: Iterable[float]) -> None:
        self.wake = wake
        self.now = 0.0
        self.events = sorted(events)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        end = self.now + seconds
        while self.events and self.events[0] <= end:
            self.events.pop(0)
            self.wake.set()
        self.now = end
        await asyncio.sleep(0)


def debounce(events: Iterable[float], quiet: float, longest: float) -> float:
    """When ``quiet_period`` returns, given file events at ``events`` (the first at 0)."""

    async def scenario() -> float:
        wake = asyncio.Event()
        wake.set()  # the event that started the reload
        vt = VirtualTime(wake, events)
        await quiet_period(wake, quiet, longest, now=vt.clock, sleep=vt.sleep)
        return vt.now

    return asyncio.run(scenario())


def test_debounce_waits_for_quiet_not_for_the_first_event() -> None:
    # An event every 40 ms up to 280 ms: never 100 ms of quiet until then.
    returned = debounce([0.04 * n for n in range(1, 8)], quiet=0.1, longest=5.0)
    # "0.1 s after the first event" would have returned while the events were still coming.
    assert 0.28 + 0.1 <= returned <= 0.28 + 0.2


def test_debounce_without_further_events_waits_one_quiet_period() -> None:
    assert debounce([], quiet=0.1, longest=5.0) == pytest.approx(0.1)


def test_debounce_gives_up_waiting_at_the_cap() -> None:
    never_quiet = [0.01 * n for n in range(1, 1000)]
    assert debounce(never_quiet, quiet=0.1, longest=0.3) == pytest.approx(0.3)


def test_a_load_that_never_returns_does_not_hold_up_the_loop_or_the_exit() -> None:
    running = threading.Event()
    release = threading.Event()

    def hangs() -> None:
        running.set()
        release.wait()

    async def scenario() -> bool:
        fut = in_daemon_thread(hangs)
        assert await asyncio.to_thread(running.wait, 5)
        return fut.done()

    # asyncio.run() waits for the default executor's threads at exit; ours must not be one.
    assert asyncio.run(scenario()) is False
    stuck = [t for t in threading.enumerate() if t.name == "config-load"]
    assert stuck and all(t.daemon for t in stuck)
    release.set()


def test_in_daemon_thread_hands_over_results_and_exceptions() -> None:
    def boom() -> None:
        raise ValueError("bad")

    async def scenario() -> tuple[int, str]:
        value = await in_daemon_thread(lambda a, b: a + b, 2, 3)
        try:
            await in_daemon_thread(boom)
        except ValueError as exc:
            return value, str(exc)
        return value, ""

    assert asyncio.run(scenario()) == (5, "bad")


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "ccs", tmp_path / "ccs")
    shutil.copytree(FIXTURES / "keys", tmp_path / "keys")
    for key in (tmp_path / "keys").iterdir():
        key.chmod(0o600)
    return tmp_path / "ccs" / "two-host.conf"


def _no_dns(names: object) -> dict[str, tuple[str, ...]]:
    return {}


def test_an_exception_in_one_reload_does_not_end_live_reload(
    deployment: Path, monkeypatch: pytest.MonkeyPatch, notify: NotifySocket
) -> None:
    monkeypatch.setattr(ccs.source, "resolve", _no_dns)
    snap = ccs.load(str(deployment), None).snapshot
    assert snap is not None
    real_load = ccs.load
    calls: list[int] = []

    def flaky_load(*args: object) -> ccs.LoadResult:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the parser fell over")
        return real_load(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ccs, "load", flaky_load)
    applied: list[int] = []

    async def scenario() -> dict[str, Any]:
        r = Reloader(str(deployment), None, snap, lambda s: applied.append(s.version))
        r.start()
        try:
            r.trigger()
            await notify.next("READY")
            assert (r.failures, applied) == (1, [])
            text = deployment.read_text().replace('config_version="7"', 'config_version="8"')
            deployment.write_text(text)  # the watch still works, and so does the loop
            await notify.next("STATUS", "config_version 8")
            assert applied == [8]
            return r.status()
        finally:
            await r.stop()

    status = asyncio.run(scenario())
    assert status["machinery"] == "ok"
    assert status["reloads"] == 1
    assert "the parser fell over" in str(status["last_problem"])


def test_a_rejected_reload_is_counted_with_its_first_problem(
    deployment: Path, monkeypatch: pytest.MonkeyPatch, notify: NotifySocket
) -> None:
    monkeypatch.setattr(ccs.source, "resolve", _no_dns)
    snap = ccs.load(str(deployment), None).snapshot
    assert snap is not None

    async def scenario() -> dict[str, Any]:
        r = Reloader(str(deployment), None, snap, lambda s: None)
        r.start()
        try:
            deployment.write_text(deployment.read_text().replace("</cluster>", ""))
            await notify.next("READY")  # whatever the reload read of the file was broken
            return r.status()
        finally:
            await r.stop()

    status = asyncio.run(scenario())
    assert "xml-syntax" in str(status["last_problem"])
    assert status["failures"] >= 1 and status["reloads"] == 0


def test_hops_follow_a_chain_of_symlinks(tmp_path: Path) -> None:
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
    real = tmp_path / "c" / "cluster.conf"
    real.write_text("x")
    os.symlink("../c/cluster.conf", tmp_path / "b" / "middle")
    os.symlink(tmp_path / "b" / "middle", tmp_path / "a" / "cluster.conf")
    chain = hops(str(tmp_path / "a" / "cluster.conf"))
    assert chain == [
        str(tmp_path / "a" / "cluster.conf"),
        str(tmp_path / "b" / "middle"),
        str(real),
    ]


@pytest.mark.parametrize("edit", ["in place", "rename over"])
def test_an_edit_of_a_symlinks_target_is_seen(tmp_path: Path, edit: str) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "cluster.conf"
    target.write_text("one")
    link = tmp_path / "etc" / "cluster.conf"
    os.symlink(target, link)
    seen = threading.Event()
    w = Watcher(lambda _path: seen.set())
    w.watch([str(link)])
    w.start()  # the inotify watches exist once start() returns (watchdog adds them first)
    try:
        if edit == "in place":
            target.write_text("two")
        else:
            (tmp_path / "real" / "new").write_text("two")
            os.rename(tmp_path / "real" / "new", target)
        assert seen.wait(5), "the edit of the real file was not noticed"
    finally:
        w.stop()
