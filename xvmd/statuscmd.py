"""``xvmd status``: this host's view, read from the running daemon's control socket.

Exit codes: 0 the daemon answered and this host may fence (quorate, or ``--local``), 1 it
answered but would refuse power actions (not quorate), 2 no daemon answered.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .control import DEFAULT_CONTROL, ControlError, query


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvmd status", description="Show the running daemon's view of this host."
    )
    p.add_argument(
        "--control",
        metavar="PATH",
        default=DEFAULT_CONTROL,
        help=f"the daemon's control socket (default {DEFAULT_CONTROL})",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(float(ts))) if ts else "--:--:--"


def _quorum_lines(q: dict[str, Any] | None) -> list[str]:
    if q is None:
        return ["quorum: not checked (--local)"]
    head = "quorate" if q.get("quorate") else "NOT QUORATE"
    lines = [f"quorum: {head}" + ("" if q.get("quorate") else f" -- {q.get('reason')}")]
    if q.get("connected"):
        ring = q.get("ring_id")
        members = q.get("members") or []
        names = ", ".join(
            f"{m.get('nodeid')}" + (f" ({m['name']})" if m.get("name") else "") for m in members
        )
        votes = ""
        if q.get("expected_votes") is not None:
            votes = (
                f"; votes {q.get('total_votes')}/{q.get('expected_votes')} expected, "
                f"quorum {q.get('quorum')}"
            )
        lines.append(
            f"  corosync cluster {q.get('cluster_name')!r}, this node "
            f"{q.get('local_nodeid')}, ring {ring[0] if ring else '?'}."
            f"{ring[1] if ring else '?'}{votes}"
        )
        lines.append(f"  members: {names or 'none'}")
    return lines


def render(doc: dict[str, Any], out: TextIO) -> None:
    up = time.time() - float(doc.get("started", time.time()))
    print(
        f"xvmd {doc.get('version')} (pid {doc.get('pid')}), {doc.get('mode')} mode, up {up:.0f}s",
        file=out,
    )
    for line in _quorum_lines(doc.get("quorum")):
        print(line, file=out)
    be = doc.get("backend", {})
    print(
        f"backend: {be.get('description')} "
        f"({'reachable' if be.get('reachable') else 'UNREACHABLE'})",
        file=out,
    )
    print(f"listening: {', '.join(doc.get('listeners', [])) or 'nothing'}", file=out)
    cfg = doc.get("config")
    if cfg:
        print(
            f"config: {cfg.get('file')}: cluster {cfg.get('cluster')!r}, config_version "
            f"{cfg.get('config_version')} ({cfg.get('reloads')} reloads)",
            file=out,
        )
        for dev in cfg.get("devices", []):
            print(f"  device {dev['name']} (key {dev['key_file']}):", file=out)
            for n in dev.get("nodes", []):
                print(f"    {n['node']} -> {n['domain']}", file=out)
        for ns in cfg.get("not_served", []):
            print(f"  not served: {ns['device']}: {ns['reason']}", file=out)
    else:
        print("config: none (--no-ccs): every domain is reachable", file=out)
    counters = doc.get("counters", {})
    answered = ", ".join(f"{k} {v}" for k, v in sorted(counters.get("answered", {}).items()))
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(counters.get("dropped", {}).items()))
    print(
        f"answered: {answered or 'none'}; dropped: {dropped or 'none'}; "
        f"in flight: {doc.get('active_sessions', 0)}",
        file=out,
    )
    recent = doc.get("recent", [])
    if recent:
        print("recent requests:", file=out)
    for r in recent[-20:]:
        via = f" [{r['device']}]" if r.get("device") else ""
        dom = f" ({r['domain']})" if r.get("domain") else ""
        print(
            f"  {_clock(r.get('epoch'))} {r.get('requester')}{via} {r.get('op')} "
            f"{r.get('target') or '-'}{dom} -> {r.get('result')}: {r.get('detail')}",
            file=out,
        )


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        doc = query(args.control)
    except ControlError as exc:
        print(f"xvmd status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        render(doc, sys.stdout)
    q = doc.get("quorum")
    return 0 if q is None or q.get("quorate") else 1
