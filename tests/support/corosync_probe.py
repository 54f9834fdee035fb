"""Follow corosync with ``CorosyncQuorum`` and print every status as one JSON line on stdout.

Run inside corosync's network and mount namespaces (tests/e2e/test_corosync.py does so with
``nsenter``): ``python -m tests.support.corosync_probe [--retry-max S]``. Each line is the
``QuorumStatus`` as a dict plus ``t`` (``time.monotonic()``, comparable with the test's clock)
and ``connects``; a line with ``"event": "started"`` follows ``start()``, then one line per
change of ``current()`` (polled every 10 ms, as the daemon reads it per request). SIGTERM stops it.
Log lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Callable

from xvmd.quorum import QuorumStatus
from xvmd.quorum.source import CorosyncQuorum


async def run(retry_initial: float, retry_max: float) -> None:
    quorum = CorosyncQuorum(retry_initial=retry_initial, retry_max=retry_max)

    def emit(status: QuorumStatus, **more: object) -> None:
        line = {"t": time.monotonic(), "connects": quorum.connects, **dataclasses.asdict(status)}
        print(json.dumps({**line, **more}), flush=True)

    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await quorum.start()
    emit(quorum.current(), event="started")
    follower = asyncio.create_task(follow(quorum, emit))
    await done.wait()
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    await quorum.stop()
    emit(quorum.current())


async def follow(quorum: CorosyncQuorum, emit: Callable[[QuorumStatus], None]) -> None:
    """Emit each new status, read as the daemon reads it: ``current()`` (every 10 ms)."""
    last = quorum.current()
    while True:
        await asyncio.sleep(0.01)
        status = quorum.current()
        if status is not last:  # a change is a new QuorumStatus
            emit(status)
            last = status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retry-initial", type=float, default=0.2)
    parser.add_argument("--retry-max", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG, format="%(relativeCreated)6.0f %(message)s"
    )
    asyncio.run(run(args.retry_initial, args.retry_max))


if __name__ == "__main__":
    main()
