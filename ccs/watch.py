"""The reload trigger: inotify (through watchdog) on the directories holding the watched files.

Rules:
1. Directories are watched, not files: editors and config tools replace a file by writing a
   temporary one and renaming it over the old, and a watch on the old file would be lost.
2. Only events that touch a watched path count; the callback runs on watchdog's thread, so it
   must only hand the event over (``loop.call_soon_threadsafe``).
3. No polling: this module never falls back to mtime loops.
4. Symlinks are followed: every hop of a watched path (the link, each intermediate link and the
   real file) is watched, so an edit of the target, or a link re-pointed, is seen. The hops are
   recomputed on every ``watch()``, i.e. after each reload.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

MAX_HOPS = 40  # the kernel's own limit on symlinks in one lookup


def hops(path: str) -> list[str]:
    """``path`` and every location it leads to through symlinks, ending at the real path."""
    out = [os.path.abspath(path)]
    current = out[0]
    for _ in range(MAX_HOPS):
        try:
            target = os.readlink(current)
        except OSError:  # not a link (or gone): the chain ends here
            break
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
        out.append(current)
    real = os.path.realpath(out[0])  # also resolves links among the directories
    return list(dict.fromkeys([*out, real]))


class _Handler(FileSystemEventHandler):
    def __init__(self, owner: Watcher) -> None:
        self._owner = owner

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Opening or reading a file changes nothing (by event type: Debian 12's watchdog 2.2
        # has no FileOpenedEvent class).
        if event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and self._owner.matches(os.path.abspath(str(path))):
                self._owner.notify(os.path.abspath(str(path)))
                return


class Watcher:
    """Calls ``on_change(path)`` when any of ``paths`` is written, replaced or removed."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._watches: dict[str, ObservedWatch] = {}
        self._observer: BaseObserver = Observer()
        self._handler = _Handler(self)

    def matches(self, path: str) -> bool:
        with self._lock:
            return path in self._paths or os.path.realpath(path) in self._paths

    def notify(self, path: str) -> None:
        self._on_change(path)

    def watch(self, paths: Iterable[str]) -> None:
        """Watch exactly ``paths`` from now on (directories are added and removed as needed)."""
        wanted = {hop for p in paths for hop in hops(p)}
        dirs = {os.path.dirname(p) for p in wanted}
        with self._lock:
            self._paths = wanted
            for d in set(self._watches) - dirs:
                self._observer.unschedule(self._watches.pop(d))
            for d in dirs - set(self._watches):
                if os.path.isdir(d):
                    self._watches[d] = self._observer.schedule(self._handler, d, recursive=False)

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
