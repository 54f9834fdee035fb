"""What runs inside a daemon's namespace: ``python -m bench.agent SUBCOMMAND ...``.

Every subcommand prints one JSON line on stdout (``poll`` and ``flood`` print ``armed`` first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from xvmd.protocol.auth import Key

from . import flood, loadgen
from .env import expected_status


def _key(path: str) -> Key:
    return Key(Path(path).read_bytes()[:4096])


def timeit(cmd: Sequence[str], runs: int, warmup: int, timeout: float) -> dict[str, object]:
    """Spawn ``cmd`` ``warmup + runs`` times; seconds from spawn to exit, exit codes, lines."""
    times: list[float] = []
    rcs: list[int] = []
    lines: list[int] = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        proc = subprocess.run(list(cmd), capture_output=True, timeout=timeout, check=False)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(round(dt * 1000, 3))
            rcs.append(proc.returncode)
            lines.append(len(proc.stdout.splitlines()))
    return {"latency_ms": times, "rc": rcs, "lines": lines}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("timeit")
    t.add_argument("--runs", type=int, required=True)
    t.add_argument("--warmup", type=int, default=0)
    t.add_argument("--timeout", type=float, default=30)
    t.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("poll", "load", "probe", "flood"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        if name != "flood":
            s.add_argument("--key", required=True)
        if name == "poll":
            s.add_argument("--target", default="vm-01")
            s.add_argument("--expect", default="0,2")
            s.add_argument("--interval", type=float, default=0.005)
            s.add_argument("--timeout", type=float, default=20)
        if name == "load":
            s.add_argument("--domains", required=True)
            s.add_argument("--count", type=int, required=True)
            s.add_argument("--concurrency", type=int, required=True)
            s.add_argument("--max-seconds", type=float, default=300)
            s.add_argument("--address", default="127.0.0.1", help="callbacks; multicast via")
            s.add_argument("--expect", help="NAME=RESULT,... instead of --domains' states")
        if name == "probe":
            s.add_argument("--target", default="vm-01")
            s.add_argument("--expect", type=int, default=0)
            s.add_argument("--seconds", type=float, required=True)
            s.add_argument("--interval", type=float, default=0.1)
        if name == "flood":
            s.add_argument("--rate", type=float, required=True)
            s.add_argument("--seconds", type=float, required=True)
            s.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    out: dict[str, object]
    if a.cmd == "timeit":
        command = a.command[1:] if a.command[:1] == ["--"] else a.command
        out = timeit(command, a.runs, a.warmup, a.timeout)
    elif a.cmd == "poll":
        print("armed", flush=True)
        expect = {int(x) for x in a.expect.split(",")}
        out = asyncio.run(
            loadgen.poll(_key(a.key), a.port, a.target, expect, a.interval, a.timeout)
        )
    elif a.cmd == "load":
        expected = expected_status(Path(a.domains)) if a.domains != "-" else {}
        if a.expect:
            expected = {n: int(r) for n, r in (x.split("=") for x in a.expect.split(","))}
        out = loadgen.load(
            _key(a.key), a.port, expected, a.count, a.concurrency,
            max_seconds=a.max_seconds, address=a.address,
        )  # fmt: skip
    elif a.cmd == "probe":
        out = asyncio.run(
            loadgen.probe(_key(a.key), a.port, a.target, a.expect, a.seconds, a.interval)
        )
    else:
        out = flood.flood(a.port, a.rate, a.seconds, a.seed)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
