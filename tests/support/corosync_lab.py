"""Real corosync nodes for tests: each a network namespace plus a private mount namespace
(tmpfs /run for corosync's pid lock, tmpfs /dev/shm for its IPC buffers), held open by a
``sleep``; corosync, probes and daemons enter it with ``nsenter``. Nothing is created in the
host namespaces; ``Lab.close`` stops every process by PID and deletes every namespace.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.harness import REPO, Netns

Status = dict[str, Any]


def corosync_conf(
    scratch: Path, nodes: list[tuple[int, str]], *, provider: bool = True, name: str = "xt"
) -> str:
    """A corosync.conf (knet, no crypto, token 1000); nodes are (nodeid, ring0_addr)."""
    state = scratch / "state"
    state.mkdir(exist_ok=True)
    node_blocks = "".join(
        f" node {{\n  name: node{nodeid}\n  nodeid: {nodeid}\n  ring0_addr: {addr}\n }}\n"
        for nodeid, addr in nodes
    )
    quorum = "quorum {\n provider: corosync_votequorum\n}\n" if provider else ""
    return (
        "totem {\n version: 2\n cluster_name: " + name + "\n transport: knet\n"
        " crypto_cipher: none\n crypto_hash: none\n token: 1000\n}\n"
        + quorum
        + "nodelist {\n"
        + node_blocks
        + "}\n"
        + f"system {{\n state_dir: {state}\n}}\n"
        + "logging {\n to_stderr: yes\n to_syslog: no\n timestamp: on\n}\n"
    )


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGKILL) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Node:
    """One corosync node: a network namespace plus a private mount namespace (see module doc)."""

    def __init__(self, netns: Netns, scratch: Path) -> None:
        self.netns = netns
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self.corosync: subprocess.Popen[bytes] | None = None
        self.holder = subprocess.Popen(
            netns.cmd(
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /dev/shm && exec sleep infinity",
            )
        )
        deadline = time.monotonic() + 5
        while Path(f"/proc/{self.holder.pid}/comm").read_text().strip() != "sleep":
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("could not set up the private mount namespace")
            time.sleep(0.01)

    def cmd(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", f"--wd={REPO}", *args]

    def start_corosync(self, conf: str) -> None:
        path = self.scratch / "corosync.conf"
        path.write_text(conf)
        with open(self.scratch / "corosync.log", "ab") as log:
            self.corosync = subprocess.Popen(
                self.cmd("corosync", "-f", "-c", str(path)), stdout=log, stderr=subprocess.STDOUT
            )

    def kill_corosync(self) -> None:
        _stop(self.corosync)
        self.corosync = None

    def close(self) -> None:
        self.kill_corosync()
        _stop(self.holder)


class LineProcess:
    """A helper program inside a node that prints one JSON object per line: the lines are
    collected as they come, and a test waits for the one it needs."""

    def __init__(self, node: Node, module: str, *args: str, stdin: bool = False) -> None:
        self.lines: list[Status] = []
        self._new: queue.Queue[None] = queue.Queue()
        log = node.scratch / f"{module.rsplit('.', 1)[-1]}.log"
        self._stderr = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            node.cmd(sys.executable, "-m", module, *args),
            stdin=subprocess.PIPE if stdin else None,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))
            self._new.put(None)

    def mark(self) -> int:
        return len(self.lines)

    def wait(self, predicate: Callable[[Status], bool], timeout: float, since: int = 0) -> Status:
        """The first line from index ``since`` on that matches, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
                seen += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(
                    f"no matching line after {timeout}s; got: {self.lines[since:]}"
                )
            self.next_line(remaining)

    def next_line(self, within: float) -> None:
        """Wait until another line came (or ``within`` seconds, at most 0.2)."""
        with contextlib.suppress(queue.Empty):
            self._new.get(timeout=min(within, 0.2))

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self._reader.join(2)
        self._stderr.close()


class Probe(LineProcess):
    """tests/support/corosync_probe.py inside a node; collects its status lines."""

    def __init__(self, node: Node) -> None:
        super().__init__(node, "tests.support.corosync_probe", "--retry-max", "1.0")

    @property
    def statuses(self) -> list[Status]:
        return self.lines


class Lab:
    """Everything one test starts, stopped and deleted in ``close`` (always called)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.namespaces: list[Netns] = []
        self.nodes: list[Node] = []
        self.probes: list[Probe] = []

    def netns(self, prefix: str) -> Netns:
        ns = Netns(prefix)
        self.namespaces.append(ns)
        return ns

    def node(self, name: str, netns: Netns | None = None) -> Node:
        node = Node(netns or self.netns("xvmd-cs"), self.scratch / name)
        self.nodes.append(node)
        return node

    def probe(self, node: Node) -> Probe:
        probe = Probe(node)
        self.probes.append(probe)
        return probe

    def close(self) -> None:
        for probe in self.probes:
            with contextlib.suppress(Exception):
                probe.stop()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
        for ns in self.namespaces:
            ns.close()
