"""Logging to stderr, one readable line per event (journald adds its own timestamps)."""

from __future__ import annotations

import logging
import os
import sys

# Libraries whose debug output rarely helps an operator; shown only with -dd.
_NOISY = ("pyroute2", "asyncio")


class _QuietLibraries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not record.name.startswith(_NOISY)


def setup(debug: int) -> None:
    level = logging.DEBUG if debug else logging.INFO
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journal:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    if debug < 2:
        # A handler filter, not logger levels: pyroute2 sets its own levels when imported.
        handler.addFilter(_QuietLibraries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
