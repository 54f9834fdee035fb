"""``python -m bench.profile``: where xvmd's time goes per request, measured, not guessed.

Starts xvmd as the benchmark does (its own network namespace, lo, the test driver), drives it
with the load generator at a fixed number of requests in flight, samples the daemon with
py-spy (``pip install py-spy``: a tool for this command, not a dependency of xvmd), and prints
the functions where the samples fall, as microseconds of daemon CPU per request: by own time
(the function itself) and by total time (with what it calls).

    python -m bench.profile [--count 6000] [--concurrency 16] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.env import DOMAINS_XML, Env, agent


def _collapsed(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """py-spy's raw (collapsed) stacks: (own samples, total samples) per frame, and samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return own, total, samples


def _table(title: str, counts: collections.Counter[str], us_per_sample: float, top: int) -> None:
    print(f"\n{title}")
    print(f"{'µs/req':>8}  function")
    for frame, n in counts.most_common(top):
        print(f"{n * us_per_sample:8.1f}  {frame}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--count", type=int, default=6000, help="status requests")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("python -m bench.profile: needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    env = Env()
    try:
        daemon = env.xvmd()
        daemon.start()
        raw = env.scratch / "profile.txt"
        record = subprocess.Popen(
            [spy, "record", "--pid", str(daemon.pid), "--rate", str(args.rate), "--format",
             "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cpu0 = daemon.cpu()
        res = agent(
            daemon.ns,
            ["load", "--port", str(daemon.port), "--key", str(env.key), "--domains",
             str(DOMAINS_XML), "--count", str(args.count), "--concurrency",
             str(args.concurrency), "--max-seconds", "300"],
            timeout=330,
        )  # fmt: skip
        cpu = daemon.cpu() - cpu0
        record.send_signal(2)  # SIGINT: py-spy writes what it has
        record.wait(30)
        own, total, samples = _collapsed(raw)
        ok = max(int(res["ok"]), 1)
        print(
            f"{ok} status requests at {args.concurrency} in flight: {res['throughput']:.0f} req/s,"
            f" daemon CPU {cpu / ok * 1e6:.0f} µs/req; {samples} samples"
        )
        # Samples of an idle loop (epoll wait) are wall time, not CPU: shown, not hidden.
        per_sample = 1e6 / args.rate / ok
        title = "own time (µs of wall time per request, idle waits included)"
        _table(title, own, per_sample, args.top)
        _table("total time", total, per_sample, args.top)
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
