"""Carrying out a request whose round sent it beyond this host's hypervisor: forwarded to the
VM's host, off on every host that has it active, the group's list, or a fixed answer.

Rules:
1. Runs only on the round's responder, after the challenge-response and the quorum check.
2. Success for ``off`` or ``reboot`` of a VM active on several hosts means inactive on every one
   of them: each host's own hypervisor said so, within the request's budget.
3. A fixed answer (the rule in ``xvmd.hosts.decide``) is logged with its reason.
"""

from __future__ import annotations

import asyncio

from xvmd.core.executor import BackendRunner
from xvmd.core.hostgroup import HostGroup
from xvmd.core.policy import Mapped, Policy, Refused
from xvmd.hosts.decide import Decision, Route
from xvmd.protocol.auth import Key
from xvmd.protocol.session import ServerSession
from xvmd.protocol.wire import FenceRequest, HostRecord, Op, Result


async def carry_out_routed(
    hosts: HostGroup,
    runner: BackendRunner,
    req: FenceRequest,
    decision: Decision,
    policy: Policy,
    scope_key: Key | None,
    session: ServerSession,
    deadline: float,
) -> tuple[Result, str]:
    """Carry out ``req`` as ``decision`` says; the answer is queued on ``session``."""
    if decision.route is Route.LIST:
        records = [HostRecord(d.name, d.uuid, int(d.state)) for d in hosts.table.union()]
        shown = policy.hostlist(scope_key, records)
        session.send_hostlist(shown)
        return Result.SUCCESS, f"{len(shown)} of {len(records)} domains of the group"
    if decision.route is Route.ANSWER:
        assert decision.result is not None
        session.send_result(decision.result)
        return decision.result, decision.why
    mapped = policy.map(scope_key, req.domain)
    if isinstance(mapped, Refused):
        session.send_result(Result.PERM)
        return Result.PERM, mapped.reason
    if decision.route is Route.FORWARD:
        to = decision.hosts[0]
        result, detail = await hosts.forward(to, req.op, mapped.domain, mapped.uuid_only, deadline)
    else:
        result, detail = await _everywhere(hosts, runner, req.op, mapped, decision, deadline)
    session.send_result(result)
    return result, detail


async def _everywhere(
    hosts: HostGroup,
    runner: BackendRunner,
    op: Op,
    mapped: Mapped,
    decision: Decision,
    deadline: float,
) -> tuple[Result, str]:
    """Off on every host in ``decision.hosts``; for a reboot, then on again on the first."""
    outcomes = await asyncio.gather(
        *(_on_host(hosts, runner, host, Op.OFF, mapped, deadline) for host in decision.hosts)
    )
    pairs = zip(decision.hosts, outcomes, strict=True)
    details = "; ".join(f"host {h}: {d}" for h, (_, d) in pairs)
    if any(result is not Result.SUCCESS for result, _ in outcomes):
        return Result.FAIL, f"not off on every host it was active on: {details}"
    if op is not Op.REBOOT:
        return Result.SUCCESS, f"off on hosts {', '.join(map(str, decision.hosts))}"
    result, detail = await _on_host(hosts, runner, decision.hosts[0], Op.ON, mapped, deadline)
    return result, f"off everywhere ({details}); on again: {detail}"


async def _on_host(
    hosts: HostGroup,
    runner: BackendRunner,
    host: int,
    op: Op,
    mapped: Mapped,
    deadline: float,
) -> tuple[Result, str]:
    if host == hosts.me:
        outcome = await runner.fence(
            op, mapped.domain, deadline, mapped.allows, exact=True, uuid_only=mapped.uuid_only
        )
        return outcome.result, outcome.detail
    return await hosts.forward(host, op, mapped.domain, mapped.uuid_only, deadline)
