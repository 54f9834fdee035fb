"""Randomized fault injection with the real daemons: the safety rule of docs/multi-host.md under
seeded random faults, checked against the hypervisors' own truth.

    python -m tests.support.chaos --seed N --duration SECONDS [--report FILE] [--scratch DIR]
    python -m tests.support.chaos --replay REPORT [--until STEP]   # the recorded schedule again

The lab (``ChaosLab``): three hosts on a bridge, each a corosync lab node running corosync (token
1000 ms), a private libvirtd with the test driver (tests/support/multihost_lab.py: the same four
domains ``vm-1``..``vm-4`` defined on every host, so a VM can run on any of them) and xvmd in
cluster mode (``-f cluster.conf -D xvm -I eth0 -U test+unix:///default``, one shared key;
control socket, audit trail and placement state in the host's scratch directory). A guest
namespace on the same bridge sends requests for the guest cluster's ``node1``..``node4``
(mapped to ``vm-1``..``vm-4``) with the stock ``/usr/sbin/fence_xvm`` and, for a share of them,
with a Python client (``--guest-client``, a helper process in the guest namespace) that counts
connect-backs. Nothing is written outside the scratch directory.

The run: events chosen at random (weights and preconditions in ``Chaos.options``; a kind that
has not happened yet weighs ``UNSEEN`` times more), each followed by 1-4 requests (status most
often, then off, reboot, on; a random node; ``-t`` 4-6 s):

- ``kill``: SIGKILL the host's xvmd, corosync and libvirtd together. Its VMs are dead.
- ``cut``: the host's bridge port down. Its VMs keep running; its libvirtd stays readable.
- ``heal``: the port up again.
- ``restart``: a dead host boots: libvirtd with every domain shut off, corosync, xvmd.
- ``move``: destroy a VM on one host of the group and start it on another.
- ``start``, ``stop``: one VM on one host; ``overlap`` starts a second copy of a running VM on
  another host of the group (as in the middle of a live migration).
- ``confirm``: ``xvmd confirm-host-down node<N>`` on a live host of the group, only for a host
  that is really dead (the operator is right), after ``xvmd status`` there no longer lists it.

At most two hosts are down (dead or cut off) at once. VMs are started (start, move, overlap)
only on hosts in the group: alive, connected, and listed by their own xvmd as a published,
quorate member, as a host cluster starts resources only on its members. Stopping a VM is allowed
on any live host, cut off or not.

The truth is what the hypervisors say: ``virsh list --all`` on every host whose libvirtd is
alive (cut-off hosts included), read right before each request is sent and right after its
answer (or time-out) came. A dead host runs nothing. The harness is sequential: between the two
readings only xvmd changes domains. An *instance* is one start of a domain: (host, boot of that
host's libvirtd, libvirt domain id); every start gets a new id, so an instance that is seen at
both readings ran through the whole request.

**The VM could run during the request** when it is active (has a domain id: running, paused...)
on some live host at both readings. The checker's rules, for one request and its answer:

1. ``off`` answered success while the VM could run (active before and active after): violation.
2. ``reboot`` answered success while one instance of the VM ran through the request (the same
   instance active before and after: it never went off): violation. A reboot restarts the VM, so
   a new instance after the answer is expected.
3. ``status`` answered OFF while the VM could run (active before and after): violation.
4. More than one connect-back for one request: violation. The Python client counts them: it
   retransmits the request every second until the first connect-back and keeps its listener
   open ``LINGER`` seconds after its exchange. For every request, stock client included, the
   run's end compares the hosts' audit trails: two hosts with a record other than ``dropped``
   (an answer, or a connect-back the client did not complete) for the same seqno, op and
   target (``double_answers``, put on its request by ``Checker.audit``).

Failures and time-outs are allowed (liveness is not required) and counted. Also counted, not
violations: ``status`` answered running while the VM was active nowhere (wrong, but on the safe
side) and ``on`` answered success while another copy ran elsewhere (a second copy: worth a look).

The report (JSON with ``--report``, a summary on stdout): events done, requests by op and
outcome, every violation with the schedule up to it (events with their parameters, requests
with both truths and the answer) and the tail of each xvmd log at that moment, and the duration.
The exit status is 1 on any violation. The same seed makes the same random choices as long as
the daemons answer alike; ``--replay`` runs a report's recorded schedule step by step.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.corosync_lab import Lab, LineProcess, Node, corosync_conf
from tests.support.harness import Netns, Xvmd, fence_xvm, run_xvmd_once
from tests.support.multihost_lab import (
    GROUP,
    GUEST,
    PORT,
    Hypervisor,
    cluster_conf,
    host_status,
    make_bridge,
    plug,
)

HOSTS = (1, 2, 3)
NODES = {f"node{i}": f"vm-{i}" for i in (1, 2, 3, 4)}  # the guest cluster
VMS = tuple(NODES.values())
UUIDS = {vm: f"c4a05000-0000-4000-8000-00000000000{i}" for i, vm in enumerate(VMS, start=1)}
DEVICE = "xvm"
KEY_FIXTURE = "host1.key"
FIRST = {"vm-1": 1, "vm-2": 2, "vm-3": 3, "vm-4": 1}  # where each VM runs at the start
LINGER = 1.0  # seconds the Python client listens on after its exchange, counting connect-backs
RESEND = 1.0  # seconds between the Python client's retransmits
PYTHON_SHARE = 0.3
OPS = {"status": 5.0, "off": 2.0, "reboot": 1.5, "on": 1.5}
TIMEOUTS = (4, 5, 6)
MAX_DOWN = 2
UNSEEN = 3.0  # weight factor of an event kind that has not happened yet in this run
GROUP_WAIT = 60.0  # seconds the lab gets to form its group at the start
NO_CONNECT_BACK = ("dropped",)  # the audit result of a request a host did not call back for
AUDIT_WINDOW = 15.0

# -- the truth and the checker (pure) ------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Instance:
    """One start of a domain: the host, the boot of its libvirtd, the libvirt domain id."""

    host: int
    boot: int
    domid: int

    def __str__(self) -> str:
        return f"host{self.host}/boot{self.boot}/id{self.domid}"

    @classmethod
    def parse(cls, text: str) -> Instance:
        host, boot, domid = text.split("/")
        return cls(int(host.removeprefix("host")), int(boot[4:]), int(domid[2:]))


Truth = dict[str, frozenset[Instance]]  # VM -> its active instances on live hosts


def truth_json(truth: Truth) -> dict[str, list[str]]:
    return {vm: sorted(map(str, truth.get(vm, ()))) for vm in VMS}


def truth_from_json(doc: dict[str, list[str]]) -> Truth:
    return {vm: frozenset(Instance.parse(i) for i in doc.get(vm, [])) for vm in VMS}


@dataclass
class Answer:
    """What one request got. ``outcome``: success, running, off, failed, refused, timeout,
    broken (the exchange broke), hung (the client outlived the harness's bound)."""

    op: str
    node: str
    client: str  # fence_xvm or python
    timeout: int
    outcome: str
    rc: int | None = None
    connections: int | None = None  # connect-backs seen (Python client only)
    peers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""

    @property
    def vm(self) -> str:
        return NODES[self.node]


def violations(answer: Answer, before: Truth, after: Truth) -> list[str]:
    """The rules of the module doc, for one request; each finding as one line."""
    vm = answer.vm
    was, now = before.get(vm, frozenset()), after.get(vm, frozenset())
    found = []
    if answer.connections is not None and answer.connections > 1:
        peers = ", ".join(answer.peers)
        found.append(f"one-answer: {answer.connections} connect-backs for one request ({peers})")
    shown = f"active before: {_list(was)}; after: {_list(now)}"
    if answer.op == "off" and answer.outcome == "success" and was and now:
        found.append(f"off: success while {vm} could run ({shown})")
    if answer.op == "reboot" and answer.outcome == "success" and was & now:
        found.append(f"reboot: success while {_list(was & now)} of {vm} ran through ({shown})")
    if answer.op == "status" and answer.outcome == "off" and was and now:
        found.append(f"status: OFF while {vm} could run ({shown})")
    return found


def notices(answer: Answer, before: Truth, after: Truth) -> list[str]:
    """Answers outside the rules that are still worth a look (counted, never violations)."""
    vm = answer.vm
    was, now = before.get(vm, frozenset()), after.get(vm, frozenset())
    found = []
    if answer.op == "status" and answer.outcome == "running" and not was and not now:
        found.append("status-running-but-off")
    if answer.op == "on" and answer.outcome == "success":
        new_hosts = {i.host for i in now - was}
        if any(i.host not in new_hosts for i in was & now) and new_hosts:
            found.append("on-started-a-second-copy")
    return found


@dataclass(frozen=True)
class Double:
    """A request that more than one host's audit trail shows taken to a connect-back."""

    op: str
    target: str
    first: float  # wall clock of the first of those records
    line: str


def double_answers(records: Iterable[tuple[int, dict[str, Any]]]) -> list[Double]:
    """(host, audit record) pairs in; the requests more than one host took to a connect-back
    out (any result but ``dropped``: an answer, or a connect-back the client did not complete).
    A request is its (seqno, op, target) within ``AUDIT_WINDOW`` seconds (the stock client's
    seqnos are small enough to repeat)."""
    taken: dict[tuple[Any, str, Any], list[tuple[float, int, str]]] = {}
    for host, rec in records:
        if rec.get("op") in OPS and rec.get("result") not in NO_CONNECT_BACK:
            key = (rec.get("seqno"), rec["op"], rec.get("target"))
            taken.setdefault(key, []).append((float(rec["epoch"]), host, rec["result"]))
    found = []
    for (seqno, op, target), hits in taken.items():
        hits.sort()
        for i in range(1, len(hits)):
            if hits[i][0] - hits[i - 1][0] <= AUDIT_WINDOW:
                shown = ", ".join(f"host {h}: {r}" for _, h, r in hits[i - 1 :])
                line = f"one-answer (audit): {op} {target} seqno {seqno} -> {shown}"
                found.append(Double(op, str(target), hits[i - 1][0], line))
                break
    return found


def _list(instances: Iterable[Instance]) -> str:
    return ", ".join(map(str, sorted(instances))) or "nowhere"


class Checker:
    """Records the schedule (events and requests) and checks every request against the rules.
    Pure: the lab hands it what happened; a test can hand it a recorded sequence."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []
        self.requests: Counter[tuple[str, str]] = Counter()
        self.events: Counter[str] = Counter()
        self.notices: dict[str, list[int]] = {}  # kind -> the steps that showed it

    def event(self, record: dict[str, Any]) -> None:
        record = {"step": len(self.steps), **record}
        self.steps.append(record)
        kind = record["event"]
        self.events[kind] += 1
        if kind == "confirm":
            self.events[f"confirm-{record.get('result', '?').split(':')[0]}"] += 1

    def request(
        self,
        answer: Answer,
        before: Truth,
        after: Truth,
        t: float = 0.0,
        evidence: Callable[[], dict[str, str]] | None = None,
        wall: tuple[float, float] | None = None,
    ) -> list[str]:
        found = violations(answer, before, after)
        step = len(self.steps)
        record: dict[str, Any] = {
            "step": step,
            "t": round(t, 2),
            "request": answer.op,
            "node": answer.node,
            "vm": answer.vm,
            "client": answer.client,
            "timeout": answer.timeout,
            "outcome": answer.outcome,
            "rc": answer.rc,
            "connections": answer.connections,
            "peers": answer.peers,
            "seconds": round(answer.seconds, 2),
            "before": truth_json(before),
            "after": truth_json(after),
        }
        if answer.detail:
            record["detail"] = answer.detail[-300:]
        if wall is not None:  # when it was sent and answered, to find it in the audit trails
            record["wall"] = [round(wall[0], 3), round(wall[1], 3)]
        self.steps.append(record)
        self.requests[(answer.op, answer.outcome)] += 1
        for notice in notices(answer, before, after):
            self.notices.setdefault(notice, []).append(step)
        if found:
            self.violations.append(
                {
                    "step": step,
                    "found": found,
                    "schedule": list(self.steps),
                    "logs": evidence() if evidence else {},
                }
            )
        return found

    def audit(self, doubles: Iterable[Double], slack: float = LINGER + 1.0) -> None:
        """Add what the audit trails show (``double_answers``) to the request it belongs to,
        unless the Python client counted the same connect-backs there already."""
        for double in doubles:
            step = next(
                (
                    s
                    for s in self.steps
                    if s.get("request") == double.op
                    and s.get("node") == double.target
                    and "wall" in s
                    and s["wall"][0] - slack <= double.first <= s["wall"][1] + slack
                ),
                None,
            )
            at = step["step"] if step is not None else None
            held = next((v for v in self.violations if v["step"] == at and at is not None), None)
            if held is None:
                upto = self.steps[: at + 1] if at is not None else list(self.steps)
                self.violations.append(
                    {"step": at, "found": [double.line], "schedule": upto, "logs": {}}
                )
                self.violations.sort(key=lambda v: (v["step"] is None, v["step"] or 0))
            elif not any(line.startswith("one-answer") for line in held["found"]):
                held["found"].append(double.line)


def recheck(steps: Iterable[dict[str, Any]]) -> Checker:
    """Run a recorded schedule (a report's ``steps``) through a new checker."""
    checker = Checker()
    for step in steps:
        if "event" in step:
            checker.event({k: v for k, v in step.items() if k != "step"})
            continue
        answer = Answer(
            step["request"],
            step["node"],
            step["client"],
            step["timeout"],
            step["outcome"],
            step.get("rc"),
            step.get("connections"),
            step.get("peers", []),
            step.get("seconds", 0.0),
            step.get("detail", ""),
        )
        before, after = truth_from_json(step["before"]), truth_from_json(step["after"])
        wall = (step["wall"][0], step["wall"][1]) if "wall" in step else None
        checker.request(answer, before, after, step.get("t", 0.0), wall=wall)
    return checker


# -- the lab -------------------------------------------------------------------------------------


class Host:
    """One hypervisor host: a corosync lab node with its libvirtd and its xvmd."""

    def __init__(self, n: int, node: Node, corosync: str, xvmd_args: list[str]) -> None:
        self.n = n
        self.node = node
        self.hv = Hypervisor(node, UUIDS)
        self.corosync = corosync
        self.xvmd_args = xvmd_args
        self.xvmd: Xvmd | None = None
        self.alive = False
        self.connected = True
        self.confirmed = False  # an operator confirmed it down since it last died

    @property
    def name(self) -> str:
        return f"node{self.n}"  # its corosync node name

    def boot(self, running: Iterable[str] = ()) -> None:
        """libvirtd (every domain shut off, then ``running`` started), corosync, xvmd."""
        self.hv.start()
        for vm in running:
            res = self.hv.virsh("start", vm)
            if res.returncode != 0:
                raise RuntimeError(f"host {self.n}: virsh start {vm}: {res.stderr.strip()}")
        self.node.start_corosync(self.corosync)
        log = self.node.scratch / f"xvmd.boot{self.hv.boot}.log"
        self.xvmd = Xvmd(self.node, self.xvmd_args, log, port=PORT).start(ready_timeout=30)
        self.alive = True
        self.confirmed = False

    def kill(self) -> None:
        """Power loss: SIGKILL to xvmd, corosync and libvirtd at once, then reap them."""
        procs = [
            p
            for p in (
                self.xvmd.proc if self.xvmd else None,
                self.node.corosync,
                self.hv.proc,
                self.hv.keeper,
            )
            if p is not None
        ]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self.hv.kill()
        self.node.kill_corosync()
        self.alive = False

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.xvmd.log().splitlines()[-lines:]) if self.xvmd else ""

    def status(self) -> dict[str, Any]:
        return host_status(self.node) if self.alive else {}

    def members(self) -> tuple[set[int], set[int], bool]:
        """(published members, members not published yet, quorate) in this host's view."""
        doc = self.status()
        hosts = doc.get("hosts") if isinstance(doc.get("hosts"), dict) else {}
        quorum = doc.get("quorum") if isinstance(doc.get("quorum"), dict) else {}
        assert isinstance(hosts, dict) and isinstance(quorum, dict)
        members = {int(m["node"]) for m in hosts.get("members", [])}
        pending = {int(n) for n in hosts.get("pending", [])}
        return members, pending, bool(quorum.get("quorate"))

    def in_group(self) -> bool:
        """Alive, connected, and a published member of a quorate group in its own view."""
        if not (self.alive and self.connected):
            return False
        members, _, quorate = self.members()
        return quorate and self.n in members


class ChaosLab:
    """Three hosts and a guest on one bridge (see the module doc)."""

    def __init__(self, lab: Lab, scratch: Path) -> None:
        self.scratch = scratch
        self.bridge = make_bridge(lab, "xvmd-cbr")
        nodes = {node: (DEVICE, vm) for node, vm in NODES.items()}
        self.conf = cluster_conf(scratch / "guests", {DEVICE: KEY_FIXTURE}, nodes)
        self.key = self.conf.parent / f"{DEVICE}.key"
        addrs = [(n, f"10.77.0.{n}") for n in HOSTS]
        self.hosts: dict[int, Host] = {}
        for n, addr in addrs:
            ns = lab.netns(f"xvmd-ch{n}")
            plug(self.bridge, ns, f"vh{n}", addr)
            node = lab.node(f"host{n}", ns)
            args = ["-f", str(self.conf), "-D", DEVICE, "-I", "eth0", "-p", str(PORT)]
            args += ["-U", Hypervisor.URI, "--control", str(node.scratch / "xvmd.sock")]
            args += ["--audit", str(node.scratch / "audit.jsonl")]
            args += ["--state", str(node.scratch / "placements.json")]
            conf = corosync_conf(node.scratch, addrs, name="hosts")
            self.hosts[n] = Host(n, node, conf, args)
        self.guest: Netns = lab.netns("xvmd-cg")
        plug(self.bridge, self.guest, "vg", GUEST)
        guest_node = lab.node("guest", self.guest)
        self.client = LineProcess(
            guest_node, "tests.support.chaos", "--guest-client", str(self.key), stdin=True
        )
        self._ids = 0
        for n, host in self.hosts.items():
            host.boot(vm for vm, first in FIRST.items() if first == n)

    def wait_for_group(self, timeout: float = GROUP_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not all(h.in_group() and h.members()[0] == set(HOSTS) for h in self.hosts.values()):
            if time.monotonic() > deadline:
                logs = "\n".join(h.log_tail() for h in self.hosts.values())
                raise RuntimeError(f"the hosts did not form their group in {timeout}s\n{logs}")
            time.sleep(0.2)

    # -- the truth

    def truth(self) -> Truth:
        found: dict[str, set[Instance]] = {vm: set() for vm in VMS}
        for host in self.hosts.values():
            if not host.alive:
                continue
            domains = host.hv.domains_now()
            if set(domains) != set(VMS):  # the keeper's connection was lost: a harness fault
                raise RuntimeError(f"host {host.n}'s libvirtd lost its domains: {domains}")
            for vm, (_, domid) in domains.items():
                if domid is not None:
                    found[vm].add(Instance(host.n, host.hv.boot, domid))
        return {vm: frozenset(s) for vm, s in found.items()}

    # -- requests

    def request(self, op: str, node: str, client: str, timeout: int) -> Answer:
        if client == "python":
            return self._python(op, node, timeout)
        args = ["-a", GROUP, "-p", str(PORT), "-k", str(self.key), "-t", str(timeout)]
        try:
            res = fence_xvm(self.guest, *args, "-o", op, "-H", node, timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            return Answer(op, node, client, timeout, "hung", seconds=timeout + 30.0)
        out = res.output
        if res.rc == 0:
            outcome = "running" if op == "status" else "success"
        elif res.rc == 2:
            outcome = "off"
        elif res.rc == 1 and "Timed out" in out:
            outcome = "timeout"
        elif res.rc == 1:
            outcome = "failed"
        else:
            outcome = f"rc{res.rc}"
        return Answer(op, node, client, timeout, outcome, res.rc, seconds=res.seconds, detail=out)

    def _python(self, op: str, node: str, timeout: int) -> Answer:
        self._ids += 1
        ask = {"id": self._ids, "op": op, "node": node, "timeout": timeout}
        mark = self.client.mark()
        stdin = self.client.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(ask) + "\n")
        stdin.flush()
        got = self.client.wait(lambda line: line.get("id") == ask["id"], timeout + 30, mark)
        result, connections = got["result"], got["connections"]
        if result is None:
            outcome = "broken" if connections else "timeout"
        elif result == 0:
            outcome = "running" if op == "status" else "success"
        else:
            outcome = {1: "failed", 2: "off", 3: "refused"}.get(result, f"result{result}")
        return Answer(
            op,
            node,
            "python",
            timeout,
            outcome,
            result,
            connections,
            got["peers"],
            got["seconds"],
            got["error"],
        )

    # -- events

    def kill(self, n: int) -> None:
        self.hosts[n].kill()

    def cut(self, n: int) -> None:
        self.bridge.ip("link", "set", f"vh{n}", "down")
        self.hosts[n].connected = False

    def heal(self, n: int) -> None:
        self.bridge.ip("link", "set", f"vh{n}", "up")
        self.hosts[n].connected = True

    def restart(self, n: int) -> None:
        self.hosts[n].boot()

    def virsh(self, n: int, *args: str) -> str:
        res = self.hosts[n].hv.virsh(*args)
        return "ok" if res.returncode == 0 else f"error: {res.stderr.strip()}"

    def confirm(self, n: int, via: int, wait: float = 15.0) -> str:
        """The operator: waits until ``xvmd status`` on ``via`` no longer lists host ``n``,
        then runs ``xvmd confirm-host-down``."""
        helper = self.hosts[via]
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            members, pending, _ = helper.members()
            if n not in members | pending:
                break
            time.sleep(0.2)
        sock = str(helper.node.scratch / "xvmd.sock")
        res = run_xvmd_once(
            helper.node, ["confirm-host-down", self.hosts[n].name, "--control", sock]
        )
        if res.rc == 0:
            self.hosts[n].confirmed = True
            return "accepted"
        return "refused: " + " ".join(res.output.split())[:200]

    def evidence(self) -> dict[str, str]:
        return {f"host{n}": h.log_tail() for n, h in self.hosts.items()}

    def audit(self) -> list[tuple[int, dict[str, Any]]]:
        """Every audit record of every host (all its boots append to one trail)."""
        out = []
        for n, host in self.hosts.items():
            path = host.node.scratch / "audit.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            for line in lines:
                with contextlib.suppress(json.JSONDecodeError):  # cut short by a kill
                    out.append((n, json.loads(line)))
        return out

    def close(self) -> None:
        self.client.stop()


# -- the run -------------------------------------------------------------------------------------


Event = dict[str, Any]


class Chaos:
    """The seeded loop: an event, then 1-4 requests, until the duration is over."""

    def __init__(self, lab: ChaosLab, rng: random.Random, say: Callable[[str], None]) -> None:
        self.lab = lab
        self.rng = rng
        self.say = say
        self.checker = Checker()
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def options(self, truth: Truth) -> list[tuple[float, str, list[Event]]]:
        """(weight, kind, the possible events of that kind) for every kind possible now."""
        hosts = self.lab.hosts
        alive = [n for n, h in hosts.items() if h.alive]
        dead = [n for n, h in hosts.items() if not h.alive]
        down = [n for n, h in hosts.items() if not h.alive or not h.connected]
        group = [n for n, h in hosts.items() if h.in_group()]
        spare = len(down) < MAX_DOWN
        first_fault = 2.0 if not down else 0.4
        active = {vm: {i.host for i in truth[vm]} for vm in VMS}
        opts: list[tuple[float, str, list[Event]]] = []

        def add(weight: float, kind: str, events: list[Event]) -> None:
            if events:
                opts.append((weight, kind, events))

        if spare:
            add(first_fault, "kill", [{"event": "kill", "host": n} for n in alive])
            cuttable = [n for n in alive if hosts[n].connected]
            add(first_fault, "cut", [{"event": "cut", "host": n} for n in cuttable])
        add(
            2.5, "heal", [{"event": "heal", "host": n} for n, h in hosts.items() if not h.connected]
        )
        unconfirmed = [n for n in dead if not hosts[n].confirmed]
        confirmed = [n for n in dead if hosts[n].confirmed]
        add(0.6, "restart", [{"event": "restart", "host": n} for n in unconfirmed])
        add(2.5, "restart", [{"event": "restart", "host": n} for n in confirmed])
        if group:
            add(
                3.5,
                "confirm",
                [{"event": "confirm", "host": n, "via": v} for n in unconfirmed for v in group],
            )
        moves = [
            {"event": "move", "vm": vm, "from": a, "to": b}
            for vm in VMS
            if len(active[vm]) == 1 and (a := next(iter(active[vm]))) in group
            for b in group
            if b != a
        ]
        add(3.0, "move", moves)
        starts = [
            {"event": "start", "vm": vm, "host": n} for vm in VMS if not active[vm] for n in group
        ]
        add(2.0, "start", starts)
        stops = [{"event": "stop", "vm": vm, "host": n} for vm in VMS for n in active[vm]]
        add(1.0, "stop", stops)
        overlaps = [
            {"event": "overlap", "vm": vm, "host": n}
            for vm in VMS
            if len(active[vm]) == 1 and next(iter(active[vm])) in group
            for n in group
            if n not in active[vm]
        ]
        add(0.5, "overlap", overlaps)
        return opts

    def choose(self) -> Event | None:
        opts = self.options(self.lab.truth())
        if not opts:
            return None
        # Kinds that have not happened yet weigh more, so a short run still sees each one.
        weights = [w * (UNSEEN if kind not in self.checker.events else 1) for w, kind, _ in opts]
        _, _, events = self.rng.choices(opts, weights=weights)[0]
        return dict(self.rng.choice(events))

    def do(self, event: Event) -> Event:
        """Carry out one event; returns it with its result."""
        lab, kind = self.lab, event["event"]
        t = self.now()
        result = "ok"
        try:
            if kind == "kill":
                lab.kill(event["host"])
            elif kind == "cut":
                lab.cut(event["host"])
            elif kind == "heal":
                lab.heal(event["host"])
            elif kind == "restart":
                lab.restart(event["host"])
            elif kind == "confirm":
                result = lab.confirm(event["host"], event["via"])
            elif kind == "move":
                result = lab.virsh(event["from"], "destroy", event["vm"])
                if result == "ok":
                    result = lab.virsh(event["to"], "start", event["vm"])
            elif kind in ("start", "overlap"):
                result = lab.virsh(event["host"], "start", event["vm"])
            elif kind == "stop":
                result = lab.virsh(event["host"], "destroy", event["vm"])
            else:
                result = f"unknown event {kind}"
        except (RuntimeError, subprocess.SubprocessError) as exc:
            result = f"error: {exc}"
        done = {**event, "t": round(t, 2), "result": result}
        self.checker.event(done)
        self.say(f"{t:7.1f}s  event {_brief(done)}")
        return done

    def ask(self, op: str, node: str, client: str, timeout: int) -> list[str]:
        before = self.lab.truth()
        t, sent = self.now(), time.time()
        answer = self.lab.request(op, node, client, timeout)
        wall = (sent, time.time())
        after = self.lab.truth()
        found = self.checker.request(answer, before, after, t, self.lab.evidence, wall)
        conn = f" connections={answer.connections}" if answer.connections is not None else ""
        self.say(
            f"{t:7.1f}s  {op:6} {node} ({client}, -t {timeout}) -> {answer.outcome}{conn}"
            f" in {answer.seconds:.1f}s"
        )
        for line in found:
            self.say(f"         VIOLATION {line}")
        return found

    def random_request(self) -> None:
        op = self.rng.choices(list(OPS), weights=list(OPS.values()))[0]
        node = self.rng.choice(list(NODES))
        client = "python" if self.rng.random() < PYTHON_SHARE else "fence_xvm"
        self.ask(op, node, client, self.rng.choice(TIMEOUTS))

    def run(self, duration: float) -> None:
        end = self.t0 + duration
        while time.monotonic() < end:
            event = self.choose()
            if event is not None:
                self.do(event)
            for _ in range(self.rng.randint(1, 4)):
                if time.monotonic() >= end:
                    break
                self.random_request()

    def replay(self, steps: list[dict[str, Any]]) -> None:
        for step in steps:
            if "event" in step:
                keep = ("event", "host", "via", "vm", "from", "to")
                self.do({k: step[k] for k in keep if k in step})
            else:
                self.ask(step["request"], step["node"], step["client"], step["timeout"])


def _brief(event: Event) -> str:
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "t", "step"))
    return f"{event['event']} {fields}"


# -- the report ----------------------------------------------------------------------------------


def report(chaos: Chaos, seed: int | None, duration: float, started: str) -> dict[str, Any]:
    checker = chaos.checker
    by_op: dict[str, dict[str, int]] = {}
    for (op, outcome), count in sorted(checker.requests.items()):
        by_op.setdefault(op, {})[outcome] = count
    return {
        "seed": seed,
        "started": started,
        "duration_s": round(duration, 1),
        "events": dict(sorted(checker.events.items())),
        "requests": by_op,
        "requests_total": sum(checker.requests.values()),
        "python_requests": sum(
            1 for s in checker.steps if s.get("client") == "python" and "request" in s
        ),
        "notices": dict(checker.notices),
        "violations": checker.violations,
        "steps": checker.steps,
    }


def summary(doc: dict[str, Any]) -> str:
    lines = [
        f"seed {doc['seed']}, started {doc['started']}, {doc['duration_s']} s",
        "events: " + ", ".join(f"{k} {v}" for k, v in doc["events"].items()),
        f"requests: {doc['requests_total']} ({doc['python_requests']} by the Python client)",
    ]
    for op, outcomes in doc["requests"].items():
        lines.append(f"  {op}: " + ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    if doc["notices"]:
        shown = (
            f"{k} {len(v)} (steps {', '.join(map(str, v))})" for k, v in doc["notices"].items()
        )
        lines.append("notices: " + "; ".join(shown))
    lines.append(f"violations: {len(doc['violations'])}")
    for v in doc["violations"]:
        for line in v["found"]:
            lines.append(f"  step {v['step']}: {line}" if v["step"] is not None else f"  {line}")
    return "\n".join(lines)


def run(
    seed: int | None,
    duration: float,
    scratch: Path,
    say: Callable[[str], None] = print,
    replay: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the lab in ``scratch``, run the chaos (or replay ``replay``), tear it all down."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    lab = Lab(scratch)
    try:
        world = ChaosLab(lab, scratch)
        world.wait_for_group()
        say(f"lab ready in {scratch}")
        chaos = Chaos(world, random.Random(seed), say)
        try:
            if replay is None:
                chaos.run(duration)
            else:
                chaos.replay(replay)
        finally:
            world.close()
        took = chaos.now()
        doubles = double_answers(world.audit())
        for double in doubles:
            say(f"audit: {double.line}")
        chaos.checker.audit(doubles)
    finally:
        lab.close()
    return report(chaos, seed, took, started)


# -- the Python client, inside the guest namespace -----------------------------------------------


def guest_client(key_path: str) -> None:
    """Serve requests from stdin (one JSON line each), answer each with one JSON line."""
    from xvmd.protocol.auth import Key

    key = Key(Path(key_path).read_bytes())
    for line in sys.stdin:
        ask = json.loads(line)
        got = python_request(key, ask["op"], ask["node"], float(ask["timeout"]))
        print(json.dumps({"id": ask["id"], **got}), flush=True)


def python_request(key: Any, op_name: str, node: str, timeout: float) -> dict[str, Any]:
    from tests.support.pyclient import exchange
    from xvmd.protocol.client import build_request
    from xvmd.protocol.wire import HashType, Op

    op = Op[op_name.upper()]
    t0 = time.monotonic()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        listener.bind((GUEST, 0))
        listener.listen(8)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(GUEST))
        packet = build_request(
            op,
            node,
            key=key,
            hashtype=HashType.SHA256,
            address=GUEST,
            port=listener.getsockname()[1],
            seqno=random.getrandbits(31),
            salt=os.urandom(6),
        )
        deadline = t0 + timeout
        resend = t0
        peers: list[str] = []
        result: int | None = None
        error = ""
        while (now := time.monotonic()) < deadline:
            if now >= resend:
                sender.sendto(packet, (GROUP, PORT))
                resend = now + RESEND
            ready, _, _ = select.select([listener], [], [], max(0.0, min(resend, deadline) - now))
            if ready:
                conn, peer = listener.accept()
                peers.append(peer[0])
                with conn:
                    conn.settimeout(10)
                    reply = exchange(conn, key, HashType.SHA256, op)
                result, error = reply.result, reply.error
                break
        if peers:  # count any further connect-back for the same request
            until = time.monotonic() + LINGER
            while (left := until - time.monotonic()) > 0:
                ready, _, _ = select.select([listener], [], [], left)
                if ready:
                    conn, peer = listener.accept()
                    peers.append(peer[0])
                    conn.close()
    return {
        "result": result,
        "connections": len(peers),
        "peers": peers,
        "error": error,
        "seconds": round(time.monotonic() - t0, 3),
    }


# -- the command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.chaos", description=__doc__)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--scratch", type=Path, help="lab directory (default: a new one in /tmp)")
    p.add_argument("--replay", type=Path, help="run the schedule of this report instead")
    p.add_argument("--until", type=int, help="with --replay: stop after this step")
    p.add_argument("--guest-client", metavar="KEY", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.guest_client:
        guest_client(args.guest_client)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="xvmd-chaos-"))
    scratch.mkdir(parents=True, exist_ok=True)
    steps = None
    if args.replay:
        steps = json.loads(args.replay.read_text())["steps"]
        if args.until is not None:
            steps = [s for s in steps if s["step"] <= args.until]
    doc = run(args.seed, args.duration, scratch, replay=steps)
    doc["scratch"] = str(scratch)
    if args.report:
        args.report.write_text(json.dumps(doc, indent=1) + "\n")
    print(summary(doc))
    print(f"logs: {scratch}")
    return 1 if doc["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
