"""Live reload machinery: the debounce waits for quiet, one failed reload never ends reloading,
loads cannot hold up the event loop, and symlinked files are watched where they really are."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

import ccs
from ccs.watch import Watcher, hops
from tests.support.harness import FIXTURES
from xvmd.daemon import reloader
from xvmd.daemon.reloader import Reloader, in_daemon_thread, quiet_period


def test_debounce_waits_for_quiet_not_for_the_first_event() -> None:
    async def scenario() -> tuple[float, float]:
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def keep_writing() -> float:
            last = loop.time()
            for _ in range(8):  # an event every 40 ms: never 100 ms of quiet
                wake.set()
                last = loop.time()
                await asyncio.sleep(0.04)
            return last

        wake.set()
        writer = asyncio.create_task(keep_writing())
        await quiet_period(wake, quiet=0.1, longest=5.0)
        return await writer, loop.time()

    last_event, returned = asyncio.run(scenario())
    # "0.1 s after the first event" would have returned while the events were still coming.
    assert returned >= last_event + 0.09


def test_debounce_gives_up_waiting_at_the_cap() -> None:
    async def scenario() -> float:
        wake = asyncio.Event()
        stop = False

        async def never_quiet() -> None:
            while not stop:
                wake.set()
                await asyncio.sleep(0.01)

        task = asyncio.create_task(never_quiet())
        t0 = time.monotonic()
        await quiet_period(wake, quiet=0.1, longest=0.3)
        took = time.monotonic() - t0
        stop = True
        await task
        return took

    took = asyncio.run(scenario())
    assert 0.25 <= took < 3.0


def test_a_load_that_never_returns_does_not_hold_up_the_loop_or_the_exit() -> None:
    release = threading.Event()

    async def scenario() -> bool:
        fut = in_daemon_thread(release.wait)
        await asyncio.sleep(0.05)
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


async def _wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.02)


def test_an_exception_in_one_reload_does_not_end_live_reload(
    deployment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader.ccs.source, "resolve", _no_dns)
    first = ccs.load(str(deployment), None)
    assert first.snapshot is not None
    real_load = ccs.load
    calls: list[int] = []

    def flaky_load(*args: object) -> ccs.LoadResult:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the parser fell over")
        return real_load(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(reloader.ccs, "load", flaky_load)
    applied: list[int] = []

    async def scenario() -> dict[str, object]:
        r = Reloader(str(deployment), None, first.snapshot, lambda s: applied.append(s.version))
        r.start()
        try:
            r.trigger()
            await _wait_for(lambda: r.failures == 1)
            text = deployment.read_text().replace('config_version="7"', 'config_version="8"')
            deployment.write_text(text)  # the watch still works, and so does the loop
            await _wait_for(lambda: applied == [8])
            return r.status()
        finally:
            await r.stop()

    status = asyncio.run(scenario())
    assert status["machinery"] == "ok"
    assert status["reloads"] == 1
    assert "the parser fell over" in str(status["last_problem"])


def test_a_rejected_reload_is_counted_with_its_first_problem(
    deployment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader.ccs.source, "resolve", _no_dns)
    first = ccs.load(str(deployment), None)
    assert first.snapshot is not None

    async def scenario() -> dict[str, object]:
        r = Reloader(str(deployment), None, first.snapshot, lambda s: None)
        r.start()
        try:
            deployment.write_text(deployment.read_text().replace("</cluster>", ""))
            await _wait_for(lambda: r.failures >= 1)
            return r.status()
        finally:
            await r.stop()

    status = asyncio.run(scenario())
    assert "xml-syntax" in str(status["last_problem"])
    assert status["reloads"] == 0


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
    w.start()
    try:
        time.sleep(0.1)
        if edit == "in place":
            target.write_text("two")
        else:
            (tmp_path / "real" / "new").write_text("two")
            os.rename(tmp_path / "real" / "new", target)
        assert seen.wait(5), "the edit of the real file was not noticed"
    finally:
        w.stop()
