"""``xvmd status``: this host's view, read from the running daemon's control socket.

Exit codes: 0 the daemon answered and this host may fence (quorate, or ``--local``), 1 it
answered but would refuse power actions (not quorate), 2 no daemon answered.

Several daemons shown one after another (no selector, several instances running) exit with the
worst of their codes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from xvmd.cli.common import add_daemon_choice, chosen_daemon
from xvmd.daemon import paths
from xvmd.daemon.control import ControlError, NotRunning, query
from xvmd.daemon.settings import DEFAULT_PORT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvmd status",
        description="Show the running daemon's view of this host. Without --control, --instance "
        f"or -p: the daemon on {paths.DEFAULT_CONTROL} if it answers, else every daemon whose "
        f"control socket in {paths.RUN_DIR} answers, one after another.",
    )
    add_daemon_choice(p)
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


def _audit_line(a: dict[str, Any] | None) -> list[str]:
    if a is None:
        return ["audit: off"]
    text = f"audit: {a.get('path')} ({a.get('written', 0)} records"
    if a.get("failures"):
        text += f"; {a['failures']} FAILED, last: {a.get('last_failure')}"
        text += f" at {_clock(a.get('last_failure_epoch'))}"
    if a.get("reopened"):
        text += f"; reopened {a['reopened']} times"
    lines = [text + ")"]
    if a.get("torn_tail"):
        lines.append(f"  torn last line found at start: {a['torn_tail']}")
    return lines


def _reload_line(r: dict[str, Any]) -> str:
    machinery = r.get("machinery", "ok")
    text = "reload: ok" if machinery == "ok" else f"reload: FAILED -- {machinery}"
    if r.get("failures"):
        text += f"; {r['failures']} changes rejected, last: {r.get('last_problem')}"
        if r.get("last_problem_epoch"):
            text += f" at {_clock(r['last_problem_epoch'])}"
    return text


def _operations_lines(doc: dict[str, Any]) -> list[str]:
    """The audit trail and live reload, when the daemon reports them (older ones do not)."""
    lines = _audit_line(doc["audit"]) if "audit" in doc else []
    if doc.get("reload") is not None:
        lines.append(_reload_line(doc["reload"]))
    return lines + _hosts_lines(doc.get("hosts"))


def _hosts_lines(h: dict[str, Any] | None) -> list[str]:
    """The host group: who is in it, what each serves and runs, what was left to others."""
    if h is None:
        return []
    joined = f"joined as node {h.get('node')}" if h.get("joined") else "NOT JOINED"
    events = "hypervisor events" if h.get("events") else "polling the hypervisor"
    lines = [f"host group {h.get('group')}: {joined} ({events})"]
    for m in h.get("members", []):
        devices = ", ".join(m.get("devices", [])) or "no device"
        active = ", ".join(m.get("active", [])) or "none"
        lines.append(
            f"  host {m.get('node')} {m.get('name')}: {devices}; {m.get('domains')} domains, "
            f"active: {active}"
        )
    for node in h.get("pending", []):
        lines.append(f"  host {node}: joined, has not published its domains yet")
    for d in h.get("departed", []):
        lines.append(f"  {d['vm']}: last seen active on host {d['node']}, which left")
    for p in h.get("proofs", []):
        lines.append(f"  host {p.get('node')} {p.get('name')}: proven down ({p.get('detail')})")
    if h.get("fencing_history_problem"):
        lines.append(f"  host cluster's fencing history: {h['fencing_history_problem']}")
    bad = ", ".join(f"{k} {v}" for k, v in sorted(h.get("bad_messages", {}).items()))
    lines.append(
        f"  answers left to other hosts: {h.get('declined', 0)}; bad messages: {bad or 'none'}"
    )
    for r in h.get("recent_declined", [])[-5:]:
        lines.append(f"    {r.get('request')} -> host {r.get('responder')} ({r.get('why')})")
    return lines


def render(doc: dict[str, Any], out: TextIO) -> None:
    up = time.time() - float(doc.get("started", time.time()))
    instance = f", instance {doc['instance']}" if doc.get("instance") else ""
    print(
        f"xvmd {doc.get('version')} (pid {doc.get('pid')}){instance}, {doc.get('mode')} mode, "
        f"up {up:.0f}s",
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
        described = cfg.get("described") or (
            f"{cfg.get('file')}: cluster {cfg.get('cluster')!r}, config_version "
            f"{cfg.get('config_version')}"
        )
        print(f"config: {described} ({cfg.get('reloads')} reloads)", file=out)
        for dev in cfg.get("devices", []):
            print(f"  device {dev['device']} (key {dev['key_file']}):", file=out)
            for n in dev.get("nodes", []):
                print(f"    {n['node']} -> {n['domain']}", file=out)
        for ns in cfg.get("not_served", []):
            print(f"  not served: {ns['device']}: {ns['reason']}", file=out)
    else:
        print("config: none (--no-ccs): every domain is reachable", file=out)
    for line in _operations_lines(doc):
        print(line, file=out)
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


def _exit_code(doc: dict[str, Any]) -> int:
    q = doc.get("quorum")
    return 0 if q is None or q.get("quorate") else 1


def _running() -> list[tuple[str, dict[str, Any]]]:
    """The default daemon if it answers (as always), else every one whose socket answers.
    A daemon that is there but does not answer properly is reported on stderr."""
    default = paths.instance_paths(None, DEFAULT_PORT)[0]
    run_dir = paths.run_dir()
    others = sorted(glob.glob(paths.CONTROL_GLOB, root_dir=run_dir))
    candidates = [default] + [os.path.join(run_dir, name) for name in others]
    found = []
    for path in dict.fromkeys(candidates):  # the default first, once
        try:
            found.append((path, query(path)))
        except NotRunning:
            continue  # no socket, or a stale one left by a daemon that was stopped
        except ControlError as exc:
            print(f"xvmd status: {exc}", file=sys.stderr)
        if path == default and found:
            break
    return found


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    path = chosen_daemon(args)
    try:
        docs = [(path, query(path))] if path is not None else _running()
    except ControlError as exc:
        print(f"xvmd status: {exc}", file=sys.stderr)
        return 2
    if not docs:
        print(
            f"xvmd status: xvmd is not running (no control socket in {paths.run_dir()} answers)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        # One daemon: its document, as always; several: a list of them.
        body: Any = docs[0][1] if len(docs) == 1 else [{"control": p, **d} for p, d in docs]
        json.dump(body, sys.stdout, indent=2)
        print()
    else:
        for n, (where, doc) in enumerate(docs):
            if len(docs) > 1:
                print(("\n" if n else "") + f"== {where}", file=sys.stdout)
            render(doc, sys.stdout)
    return max(_exit_code(doc) for _, doc in docs)
