"""Join a corosync CPG group with ``CpgGroup`` and print every event as one JSON line on stdout.

Run inside corosync's network and mount namespaces (tests/e2e/test_cpg.py does so with
``nsenter``): ``python -m tests.support.cpg_probe --group NAME [--retry-max S]``. Lines:

- ``{"event": "started", ...}`` once ``start()`` returned;
- ``{"event": "view", "connected", "members", "seq", "processes", ...}`` per membership view;
- ``{"event": "message", "nodeid", "size", "text", ...}`` per delivered message (``text`` is
  the payload as UTF-8, or null beyond 4 KiB);
- ``{"event": "dropped", "text"}`` when ``send`` refused a line.

Every line also has ``t`` (``time.monotonic()``, comparable with the test's clock), ``pid``,
``local_nodeid``, ``sent``, ``dropped_sends`` and ``reconnects``. Each line read on stdin is
sent as a message (without its newline); ``@big N`` sends N bytes of ``b"x"`` instead. SIGTERM
stops it; log lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from xvmd.hosts.group import CpgGroup, GroupView

TEXT_MAX = 4096


class Printer:
    """Prints the group's events; the group is attached once built."""

    def __init__(self) -> None:
        self.group: CpgGroup | None = None

    def emit(self, event: str, **fields: object) -> None:
        group = self.group
        line: dict[str, object] = {"event": event, "t": time.monotonic(), "pid": os.getpid()}
        if group is not None:
            line.update(
                local_nodeid=group.local_nodeid,
                sent=group.sent,
                dropped_sends=group.dropped_sends,
                reconnects=group.reconnects,
            )
        print(json.dumps({**line, **fields}), flush=True)

    def on_view(self, view: GroupView) -> None:
        processes = [list(p) for p in self.group.processes] if self.group else []
        self.emit(
            "view",
            connected=view.connected,
            members=list(view.members),
            seq=view.seq,
            processes=processes,
        )

    def on_message(self, nodeid: int, payload: bytes) -> None:
        text = payload.decode(errors="replace") if len(payload) <= TEXT_MAX else None
        self.emit("message", nodeid=nodeid, size=len(payload), text=text)


def payload_of(line: str) -> bytes:
    if line.startswith("@big "):
        return b"x" * int(line.split()[1])
    return line.encode()


async def read_stdin(group: CpgGroup, printer: Printer) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=4 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        text = line.decode().rstrip("\n")
        if not group.send(payload_of(text)):
            printer.emit("dropped", text=text)


async def run(name: str, retry_initial: float, retry_max: float) -> None:
    printer = Printer()
    group = CpgGroup(
        name,
        printer.on_message,
        printer.on_view,
        retry_initial=retry_initial,
        retry_max=retry_max,
    )
    printer.group = group
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await group.start()
    printer.emit("started")
    reader = asyncio.create_task(read_stdin(group, printer))
    await done.wait()
    reader.cancel()
    await group.stop()
    printer.emit("stopped")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", default="xvmd-probe")
    parser.add_argument("--retry-initial", type=float, default=0.2)
    parser.add_argument("--retry-max", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG, format="%(relativeCreated)6.0f %(message)s"
    )
    asyncio.run(run(args.group, args.retry_initial, args.retry_max))


if __name__ == "__main__":
    main()
