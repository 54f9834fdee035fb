"""Who answers a request, and how, from the group's table alone (pure).

Every member evaluates ``decide`` on the same table at the same point of the agreed message
order (where the request's first claim is delivered), so all reach the same decision and
exactly one host connects back. The rule, for a request verified with a key of fingerprint F:

- candidates are the members serving a device with F: only they can authenticate the client.
  None: nobody answers (the client times out, as with no host at all).
- the VM is active on exactly one member: that member answers if it is a candidate, else the
  lowest candidate answers and forwards the operation to it.
- active on several members (mid-migration): the lowest candidate among them (else the lowest
  candidate) answers; ``off`` and ``reboot`` must leave it inactive on every one of them.
- last seen active on a host that left (or rejoined without publishing yet): the VM may still
  run there, so ``off``, ``reboot`` and ``status`` fail, naming that host and how to prove it
  down; never OFF, never success on assumption. Once the host is proven down (the host
  cluster's fencing, or an operator), the VM is off there: ``status`` OFF, ``off`` success,
  ``reboot`` success (it cannot be started again where it was: the log says so).
- inactive everywhere but defined on members: the request goes to the lowest of them, whose
  hypervisor answers (status OFF, off "already off", on starts it there).
- once seen, defined nowhere: ``status`` OFF, ``off`` success; ``on`` and ``reboot`` fail.
- known nowhere: ``status`` OFF; every power action fails.
- while a member has not published its inventory, it may hold the VM: anything that relies on
  the VM not running there (off, reboot, a query or an ``on`` of a VM active nowhere else) fails
  until it has.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from xvmd.hosts.table import Table, Where
from xvmd.protocol.wire import Op, Result


class Route(enum.Enum):
    ACT = "act"  # the responder acts on its own hypervisor
    FORWARD = "forward"  # the responder forwards to ``hosts[0]`` and relays the outcome
    EVERYWHERE = "everywhere"  # off on every host in ``hosts`` (then, for reboot, on again)
    LIST = "list"  # the union of every member's domains, from the table
    ANSWER = "answer"  # a fixed ``result``: nothing to act on
    NOBODY = "nobody"  # no member can authenticate the client: nobody answers


@dataclass(frozen=True, slots=True)
class Decision:
    responder: int | None
    route: Route
    hosts: tuple[int, ...] = ()
    result: Result | None = None
    why: str = ""

    def answers(self, node: int) -> bool:
        return self.responder == node

    @property
    def routed(self) -> bool:
        """Carried out other than by acting on this host's own hypervisor alone."""
        return self.route is not Route.ACT


def decide(table: Table, op: Op, domain: str, uuid_only: bool, fingerprint: str) -> Decision:
    candidates = table.candidates(fingerprint)
    if not candidates:
        return Decision(None, Route.NOBODY, why="no member serves a device with this key")
    first = candidates[0]
    if op is Op.HOSTLIST:
        return Decision(first, Route.LIST, why="every member's domains")
    if not op.needs_domain:
        return Decision(first, Route.ACT, (first,), why="answered by the lowest candidate")
    if not domain:  # the policy maps the target to no VM: refused after authentication
        return Decision(first, Route.ACT, (first,), why="refused by the cluster's map")
    where = table.where(domain, uuid_only)
    blocked = _blocked(table, op, where, first)
    if blocked is not None:
        return blocked
    if where.active_on:
        return _active(candidates, op, where)
    if where.defined_on:
        return _to(candidates, where.defined_on[0], "shut off; its host answers")
    if where.proven:
        return _proven_down(table, first, op, where)
    return _absent(first, op, where.known)


def _proven_down(table: Table, first: int, op: Op, where: Where) -> Decision:
    """Active nowhere, defined on no member, last seen on hosts proven down: it is off."""
    proofs = "; ".join(
        f"host {n} ({table.name_of(n)}) is down: {p.detail}"
        for n in where.proven
        if (p := table.proof(n)) is not None
    )
    if op is Op.STATUS:
        return Decision(first, Route.ANSWER, where.proven, Result.OFF, proofs)
    if op is Op.OFF:
        return Decision(first, Route.ANSWER, where.proven, Result.SUCCESS, proofs)
    if op is Op.REBOOT:
        why = f"{proofs}; it is off, but cannot be started again: no member defines it"
        return Decision(first, Route.ANSWER, where.proven, Result.SUCCESS, why)
    why = f"{proofs}; no member defines it, so it cannot be started"
    return Decision(first, Route.ANSWER, where.proven, Result.FAIL, why)


def _blocked(table: Table, op: Op, where: Where, first: int) -> Decision | None:
    """A failure when a host that may run the VM has not said otherwise. Only a query of a VM
    that is active on a member (it runs: true whatever else is unknown) is let through, and
    ``on`` of such a VM (it runs already)."""
    if op not in (Op.OFF, Op.REBOOT) and where.active_on:
        return None
    if where.departed:
        return Decision(first, Route.ANSWER, where.departed, Result.FAIL, _unproven(table, where))
    if table.pending:
        pending = ", ".join(map(str, table.pending))
        why = f"host {pending} has not published its domains yet: it may run the VM"
        return Decision(first, Route.ANSWER, table.pending, Result.FAIL, why)
    return None


def _unproven(table: Table, where: Where) -> str:
    hosts = ", ".join(f"{n} ({table.name_of(n)})" for n in where.departed)
    gone = [n for n in where.departed if table.left_at(n) is not None]
    if not gone:
        return (
            f"last seen active on host {hosts}, which rejoined and has not published its "
            "domains yet: it may run there"
        )
    names = " ".join(table.name_of(n) for n in gone)
    return (
        f"last seen active on host {hosts}, which left the group and is not proven down: it "
        "may still run there. Once that host is really off, fence it in the host cluster "
        f"(stonith_admin --fence/--confirm) or run: xvmd confirm-host-down {names}"
    )


def _active(candidates: tuple[int, ...], op: Op, where: Where) -> Decision:
    owners = where.active_on
    if len(owners) == 1:
        return _to(candidates, owners[0], "active on one member")
    able = [n for n in owners if n in candidates]
    responder = able[0] if able else candidates[0]
    if op in (Op.OFF, Op.REBOOT):
        return Decision(responder, Route.EVERYWHERE, owners, why="active on several members")
    return _to(candidates, able[0] if able else owners[0], "active on several members")


def _to(candidates: tuple[int, ...], host: int, why: str) -> Decision:
    if host in candidates:
        return Decision(host, Route.ACT, (host,), why=why)
    return Decision(candidates[0], Route.FORWARD, (host,), why=why)


def _absent(first: int, op: Op, known: bool) -> Decision:
    if op is Op.STATUS:
        why = "defined on no member" if known else "known to no member"
        return Decision(first, Route.ANSWER, (), Result.OFF, why)
    if op is Op.OFF and known:
        return Decision(first, Route.ANSWER, (), Result.SUCCESS, "already off: defined nowhere")
    why = "defined on no member" if known else "known to no member: never assumed dead"
    return Decision(first, Route.ANSWER, (), Result.FAIL, why)
