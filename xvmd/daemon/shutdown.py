"""A stop that always ends: nothing at exit may wait for a hypervisor that stopped answering.

A power action in a libvirt call that never returns leaves a worker thread blocked for good.
Python joins every pool worker at exit, so after the drain the process leaves with
``os._exit`` when such threads remain (the audit trail and logs are flushed first).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("xvmd")

CLOSE_TIMEOUT = 2.0
"""Seconds for closing the hypervisor connection at exit: a wedged libvirtd may never answer."""


def close_within(close: Callable[[], None], timeout: float, what: str) -> None:
    """Call ``close`` in a daemon thread and wait at most ``timeout`` seconds for it."""
    done = threading.Thread(target=close, name="backend-close", daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        log.warning("closing %s did not finish in %gs; exiting without it", what, timeout)


def stuck_threads() -> list[str]:
    """Names of the threads that would keep the process from exiting (hung hypervisor calls:
    the interpreter joins every worker at exit, and a wedged libvirtd never returns)."""
    main = threading.main_thread()
    return [t.name for t in threading.enumerate() if t is not main and not t.daemon]


def leave(rc: int) -> int:
    """Return ``rc`` for a normal exit, or end the process now if a hung call would block it."""
    stuck = stuck_threads()
    if not stuck:
        return rc
    log.warning(
        "%d worker threads are still blocked in the hypervisor (%s); exiting without them",
        len(stuck),
        ", ".join(sorted(set(stuck))),
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
