"""Live reload: file events and SIGHUP -> load -> decide -> swap the policy, or keep the old one.

The daemon keeps serving on its last good snapshot whatever happens here; every problem with a
rejected configuration is logged with file, line and code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import ccs
import ccs.source
from ccs.load import Snapshot
from ccs.reload import decide
from ccs.watch import Watcher

from . import systemd

log = logging.getLogger("xvmd.config")

DEBOUNCE = 0.1
"""Seconds of quiet after a file event before reloading: an editor's save is several events."""


class Reloader:
    def __init__(
        self,
        path: str,
        devices: Sequence[str] | None,
        snapshot: Snapshot,
        apply: Callable[[Snapshot], None],
    ) -> None:
        self.path = path
        self.devices = devices
        self.current = snapshot
        self.reloads = 0
        self._apply = apply
        self._wake = asyncio.Event()
        self._watcher: Watcher | None = None
        self._task: asyncio.Task[None] | None = None

    def _watched(self, cluster: ccs.Cluster | None) -> list[str]:
        cl = cluster or self.current.cluster
        return [self.path, *sorted({cl.key_path(d) for d in cl.devices if d.is_xvm})]

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def on_change(_path: str) -> None:  # watchdog's thread: only hand over
            loop.call_soon_threadsafe(self._wake.set)

        self._watcher = Watcher(on_change)
        self._watcher.watch(self._watched(None))
        self._watcher.start()
        self._task = asyncio.create_task(self._run())

    def trigger(self) -> None:
        """Reload now (SIGHUP); safe to call from the event loop only."""
        self._wake.set()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(DEBOUNCE)
            self._wake.clear()
            systemd.reloading()
            result = await loop.run_in_executor(
                None, ccs.load, self.path, self.devices, ccs.source.resolve
            )
            if self._watcher is not None:
                self._watcher.watch(self._watched(result.cluster))
            decision = decide(self.current, result)
            systemd.ready(f"config_version {(decision.snapshot or self.current).version}")
            if decision.snapshot is None:
                level = logging.ERROR if decision.problems else logging.INFO
                if "ignored" in decision.summary:
                    level = logging.WARNING
                log.log(level, "%s", decision.summary)
                for issue in decision.problems:
                    log.error("  %s", issue.render())
                continue
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


def _listener_attrs(snap: Snapshot) -> dict[str, str]:
    fx = snap.cluster.fence_xvmd
    return dict(fx.attrs) if fx is not None else {}
