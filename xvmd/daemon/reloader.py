"""Live reload: file events and SIGHUP -> load -> decide -> swap the policy, or keep the old one.

Rules:
1. The daemon keeps serving on its last good snapshot whatever happens here; every problem
   with a rejected configuration is logged with file, line and code.
2. The reload loop cannot die: an unexpected exception in one reload is logged, counted and
   shown by ``xvmd status``, and the next event or SIGHUP reloads again. Should the loop itself
   end anyway, that is logged as CRITICAL and shown too.
3. Loads run in a daemon thread of their own: a file system or resolver that hangs delays the
   reload (reported after LOAD_TIMEOUT), never the event loop or the daemon's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import ccs
import ccs.source
from ccs.load import LoadResult, Snapshot
from ccs.reload import Decision, Verdict, decide
from ccs.watch import Watcher
from xvmd.daemon import systemd

log = logging.getLogger("xvmd.config")
T = TypeVar("T")

DEBOUNCE = 0.1
"""Seconds of quiet after a file event before reloading: an editor's save is several events."""
MAX_DEFER = 2.0
"""A file that never stops changing is still reloaded this often."""
LOAD_TIMEOUT = 30.0
"""A load that takes longer is reported as hung; its thread is left behind, not waited for."""


def in_daemon_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Run ``fn(*args)`` in a new daemon thread; the future resolves on the running loop.

    Not the default executor: asyncio.run() waits for its threads at exit, so one hung read
    would keep a stopped daemon alive."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, failed: bool) -> None:
        if fut.done():
            return
        if failed:
            fut.set_exception(value)
        else:
            fut.set_result(value)

    def body() -> None:
        outcome: tuple[Any, bool]
        try:
            outcome = (fn(*args), False)
        except BaseException as exc:  # handed to the awaiting coroutine
            outcome = (exc, True)
        # The loop may have closed while this thread was blocked: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=body, name="config-load", daemon=True).start()
    return fut


async def quiet_period(
    wake: asyncio.Event,
    quiet: float,
    longest: float,
    *,
    now: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Return once ``wake`` stayed unset for ``quiet`` seconds, or ``longest`` seconds passed.
    ``now`` and ``sleep`` default to the event loop's clock (a test passes its own)."""
    clock = now or asyncio.get_running_loop().time
    give_up = clock() + longest
    while True:
        wake.clear()
        await sleep(max(0.0, min(quiet, give_up - clock())))
        if not wake.is_set() or clock() >= give_up:
            wake.clear()
            return


class Reloader:
    def __init__(
        self,
        path: str,
        devices: Sequence[str] | None,
        snapshot: Snapshot,
        apply: Callable[[Snapshot], None],
        on_reload: Callable[[], None] | None = None,
        corosync: str | None = None,
    ) -> None:
        self.path = path
        self.corosync = corosync  # a CIB export's corosync.conf (None: beside it)
        self.devices = devices
        self.current = snapshot
        self.reloads = 0
        self.failures = 0  # reloads that were rejected, timed out or crashed
        self.last_problem: str | None = None
        self.last_problem_epoch: float | None = None
        self._lasting: str | None = None  # no watch thread, or the loop ended: until restart
        self._watch_problem: str | None = None  # the last re-watch failed; the next may mend it
        self._apply = apply
        self._on_reload = on_reload  # e.g. reopen the audit trail on SIGHUP
        self._wake = asyncio.Event()
        self._watcher: Watcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loading: asyncio.Future[LoadResult] | None = None  # a load still running

    def _watched(self, cluster: ccs.Cluster | None) -> list[str]:
        cl = cluster or self.current.cluster
        keys = sorted({cl.key_path(d) for d in cl.devices if d.is_xvm})
        return [self.path, *cl.sources, *keys]

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def on_change(_path: str) -> None:  # watchdog's thread: only hand over
            loop.call_soon_threadsafe(self._wake.set)

        self._watcher = Watcher(on_change)
        self._rewatch(None)
        try:
            self._watcher.start()
        except Exception as exc:  # e.g. inotify instances exhausted: SIGHUP still works
            self._lasting = f"file watch not running ({exc}); reload with SIGHUP"
            log.critical("live reload: %s", self._lasting)
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._ended)

    def trigger(self) -> None:
        """Reload now (SIGHUP); safe to call from the event loop only."""
        if self._on_reload is not None:
            self._on_reload()
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.stop()
        if self._task is not None:
            self._task.cancel()

    @property
    def machinery(self) -> str:
        """ "ok", or what broke the watch or the reload loop itself."""
        return self._lasting or self._watch_problem or "ok"

    def status(self) -> dict[str, Any]:
        return {
            "reloads": self.reloads,
            "failures": self.failures,
            "last_problem": self.last_problem,
            "last_problem_epoch": self.last_problem_epoch,
            "machinery": self.machinery,
        }

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task.cancelled():
            return
        self._lasting = f"reload loop stopped: {task.exception()!r}; restart xvmd to reload again"
        log.critical("live reload: %s", self._lasting)

    def _problem(self, text: str) -> None:
        self.failures += 1
        self.last_problem = text
        self.last_problem_epoch = time.time()

    def _rewatch(self, cluster: ccs.Cluster | None) -> None:
        if self._watcher is None:
            return
        try:
            self._watcher.watch(self._watched(cluster))
        except Exception as exc:  # a directory that vanished, inotify limits
            self._watch_problem = (
                f"cannot watch the configuration files ({exc}); reload with SIGHUP"
            )
            log.critical("live reload: %s", self._watch_problem)
        else:
            self._watch_problem = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await quiet_period(self._wake, DEBOUNCE, MAX_DEFER)
            systemd.reloading()
            try:
                await self._reload_once()
            except Exception as exc:  # never let one bad reload end live reload
                self._problem(f"reload failed unexpectedly: {exc!r}")
                log.exception(
                    "reload of %s failed unexpectedly; still serving config_version %d",
                    self.path,
                    self.current.version,
                )
            systemd.ready(f"config_version {self.current.version}")

    async def _reload_once(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._problem(
                f"the previous load of {self.path} has not returned yet (hung file "
                "system or resolver?); not starting another"
            )
            log.error("%s", self.last_problem)
            return
        load = self._loading = in_daemon_thread(
            ccs.load, self.path, self.devices, ccs.source.resolve, self.corosync
        )
        load.add_done_callback(_consume)
        try:
            result: LoadResult = await asyncio.wait_for(asyncio.shield(load), LOAD_TIMEOUT)
        except TimeoutError:
            self._problem(
                f"loading {self.path} took over {LOAD_TIMEOUT:g}s (hung file system or resolver?)"
            )
            log.error(
                "%s; still serving config_version %d", self.last_problem, self.current.version
            )
            return
        self._rewatch(result.cluster)
        decision = decide(self.current, result)
        if decision.snapshot is None:
            self._rejected(decision)
            return
        old, self.current = self.current, decision.snapshot
        self._apply(decision.snapshot)
        self.reloads += 1
        log.info("reloaded %s: %s", self.path, decision.summary)
        for issue in decision.snapshot.issues:
            log.warning("  %s", issue.render())
        if _listener_attrs(old) != _listener_attrs(decision.snapshot):
            log.warning(
                "<fence_xvmd> listener settings changed; they take effect only after a "
                "restart of xvmd"
            )

    def _rejected(self, decision: Decision) -> None:
        level = _LEVELS[decision.verdict]
        log.log(level, "%s", decision.summary)
        for issue in decision.problems:
            log.error("  %s", issue.render())
        if decision.problems:
            self._problem(f"{decision.summary}: {decision.problems[0].render()}")


_LEVELS = {  # how loudly a reload that changed nothing is logged
    Verdict.REJECTED: logging.ERROR,
    Verdict.NOT_BUMPED: logging.WARNING,
    Verdict.UNCHANGED: logging.INFO,
}


def _consume(fut: asyncio.Future[LoadResult]) -> None:
    """A load that outlived its wait may still fail; its exception was reported already."""
    if not fut.cancelled():
        fut.exception()


def _listener_attrs(snap: Snapshot) -> dict[str, str]:
    fx = snap.cluster.fence_xvmd
    return dict(fx.attrs) if fx is not None else {}
