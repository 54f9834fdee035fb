"""``python -m bench [--quick] [--scenarios a,b]``: run, then write the report and the raw JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import report, scale, scenarios
from .env import FENCE_VIRTD, FENCE_XVM, REPO, Env, byte_compile, cpu_idle, machine, run, say
from .stats import FULL, QUICK, Plan

Scenario = Callable[[Env, Plan], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {
    "latency": scenarios.latency,
    "load": scenarios.load,
    "flood": scenarios.flood,
    "scale": scale.scale,
    "footprint": scenarios.footprint,
    "hol": scenarios.hol,
    "multihost": scenarios.multihost,
}


def _git() -> str:
    rev = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).strip()
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "xvmd", "ccs"], check=False)
    return f"commit {rev or '?'}" + (" with uncommitted changes in xvmd/ or ccs/" if dirty else "")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller counts (about 4 minutes)")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)",
    )
    p.add_argument("--json", default=str(REPO / "bench/results/latest.json"), help="raw output")
    p.add_argument("--report", default=str(REPO / "docs/performance.md"), help="markdown output")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (daemon logs)")
    p.add_argument(
        "--render", action="store_true", help="only rewrite the report from the JSON (no run)"
    )
    args = p.parse_args(argv)
    if args.render:
        doc = json.loads(Path(args.json).read_text())
        Path(args.report).write_text(report.render(doc["meta"], doc["results"]))
        return 0
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios: {', '.join(unknown)}")
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    for tool in (FENCE_XVM, FENCE_VIRTD):
        if not os.path.exists(tool):
            p.error(f"{tool} is missing (apt-get install fence-virt fence-virtd)")
    plan = QUICK if args.quick else FULL
    command = "python -m bench" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "quick": plan.quick,
        "plan": plan.__dict__,
        "machine": machine(),
        "git": _git(),
        "loadavg_before": _loadavg(),
        "cpu_idle_before": round(cpu_idle(), 3),
    }
    if meta["cpu_idle_before"] < 0.8:
        say(
            f"warning: only {meta['cpu_idle_before']:.0%} of the CPU is idle; numbers will be noisy"
        )
    byte_compile()
    t0 = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    e = Env()
    say(f"scratch {e.scratch}; scenarios {', '.join(chosen)}; {'quick' if plan.quick else 'full'}")
    ok = True
    try:
        for name in chosen:
            ts = time.monotonic()
            say(f"scenario {name}")
            try:
                results[name] = SCENARIOS[name](e, plan)
            except Exception:
                ok = False
                results[name] = {"error": traceback.format_exc(limit=6), "goals": []}
                say(f"scenario {name} FAILED:\n{results[name]['error']}")
            results[name]["seconds"] = round(time.monotonic() - ts, 1)
            say(f"scenario {name} done in {results[name]['seconds']} s")
    finally:
        e.close()
        if args.keep or not ok:
            say(f"logs kept in {e.scratch}")
        else:
            shutil.rmtree(e.scratch, ignore_errors=True)
    meta["seconds"] = time.monotonic() - t0
    meta["loadavg_after"] = _loadavg()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    Path(args.report).write_text(report.render(meta, results))
    say(f"wrote {out} and {args.report} in {meta['seconds']:.0f} s")
    for g in [g for r in results.values() for g in r.get("goals", [])]:
        print(f"{'MET ' if g['met'] else 'MISS'} {g['scenario']}: {g['what']} = {g['value']} "
              f"(goal {g['target']})")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
