"""Run a call that might block (a FIFO opened by mistake) without letting it hang the suite."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def promptly(fn: Callable[[], T], unblock: Path | None = None, seconds: float = 5.0) -> T:
    """``fn()`` run in a thread; fails the test (instead of hanging it) after ``seconds``.
    ``unblock``: a FIFO whose other end is opened then, so that the blocked call returns."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            # Both ends non-blocking where possible: a reader gets EOF, a writer a reader.
            for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
                try:
                    os.close(os.open(unblock, flags))
                except OSError:
                    continue
            thread.join(seconds)
        pytest.fail(f"{fn} blocked")
    if errors:
        raise errors[0]
    return out[0]
