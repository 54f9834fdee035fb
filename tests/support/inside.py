"""Tools for tests that act inside a private network namespace and look at a running xvmd from
outside: sockets made in the namespace, the daemon's status document, its /proc view.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.support.harness import Netns, Xvmd
from xvmd.daemon.control import query

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(netns: Netns) -> None:
    """Move the calling thread (or forked process) into ``netns``; setns is per thread, and
    os.setns needs Python 3.12."""
    fd = os.open(f"/run/netns/{netns.name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


def ns_socket(
    netns: Netns, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket living in ``netns``, made by a short-lived thread that entered it; the test
    itself stays where it is and can hold any number of them."""
    out: dict[str, Any] = {}

    def make() -> None:
        try:
            enter_netns(netns)
            out["sock"] = socket.socket(family, kind, proto)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    sock: socket.socket = out["sock"]
    return sock


def closed_port(netns: Netns) -> int:
    """A TCP port on 127.0.0.1 in ``netns`` that nothing listens on."""
    with ns_socket(netns) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def status(d: Xvmd) -> dict[str, Any]:
    """``xvmd status --json``, read from the daemon's control socket."""
    return query(d.args[d.args.index("--control") + 1])


def dropped(d: Xvmd, reason: str) -> int:
    return int(status(d)["counters"]["dropped"].get(reason, 0))


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; raises AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sockets_to(pid: int, port: int) -> int:
    """TCP sockets held open by ``pid`` whose peer port is ``port`` (its netns's /proc view)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                if int(cols[2].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                    count += 1
    return count
