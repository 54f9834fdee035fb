"""Logging to stderr, one readable line per event (journald adds its own timestamps)."""

from __future__ import annotations

import logging
import os
import sys


def setup(debug: int) -> None:
    level = logging.DEBUG if debug else logging.INFO
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journal
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pyroute2 and asyncio are chatty at debug; their details rarely help an operator.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug > 1 else logging.WARNING)
