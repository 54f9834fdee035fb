"""Carrying out a request whose round sent it beyond this host's hypervisor: forwarded to the
VM's host, off on every host that has it active, the group's list, or a fixed answer.

Rules:
1. Runs only on the round's responder, after the challenge-response and the quorum check.
2. Success for ``off`` or ``reboot`` of a VM active on several hosts means inactive on every one
   of them: each host's own hypervisor said so, within the request's budget.
3. A fixed answer (the rule in ``xvmd.hosts.decide``) is logged with its reason.
4. No answer says a VM is not running (status OFF, success to off or reboot) on the group's
   table alone, which lags the hypervisors by an event and a delivery: every member is asked
   first (``xvmd.core.sweeps``), and a member that runs it, cannot tell or does not answer
   changes the answer.
"""

from __future__ import annotations

import asyncio

from xvmd.core.acting import Admitted, Done, act
from xvmd.core.executor import BackendRunner
from xvmd.core.hostgroup import HostGroup
from xvmd.core.policy import Mapped, Refused
from xvmd.hosts.decide import Decision, Route
from xvmd.protocol.session import ServerSession
from xvmd.protocol.wire import HostRecord, Op, Result

SWEEP_MARGIN = 0.5
"""Seconds of a request's budget kept for sending the answer after a sweep."""


async def carry_out_in_group(
    hosts: HostGroup,
    runner: BackendRunner,
    job: Admitted,
    decision: Decision,
    session: ServerSession,
    deadline: float,
) -> Done:
    """Carry out ``job`` as the round's ``decision`` says; the answer is queued on ``session``
    once a negative one has been swept (rule 4)."""
    req = job.req
    if decision.route is Route.LIST:
        records = [HostRecord(d.name, d.uuid, int(d.state)) for d in hosts.table.union()]
        shown = job.policy.hostlist(job.ok.scope_key, records)
        session.send_hostlist(shown)
        return Done(Result.SUCCESS, f"{len(shown)} of {len(records)} domains of the group")
    mapped = job.policy.map(job.ok.scope_key, req.domain) if req.op.needs_domain else None
    if decision.route is Route.ACT:
        done = await act(runner, job, deadline)
    elif decision.route is Route.ANSWER:
        assert decision.result is not None
        done = Done(decision.result, decision.why)
    elif isinstance(mapped, Refused) or mapped is None:
        done = Done(Result.PERM, mapped.reason if mapped is not None else "no domain named")
    elif decision.route is Route.FORWARD:
        to = decision.hosts[0]
        done = Done(*await hosts.forward(to, req.op, mapped.domain, mapped.uuid_only, deadline))
    else:
        done = Done(*await _everywhere(hosts, runner, req.op, mapped, decision, deadline))
    if isinstance(mapped, Mapped) and says_not_running(req.op, done.result):
        done = await _swept(hosts, req.op, mapped, decision, done, deadline)
    session.send_result(done.result)
    return done


def says_not_running(op: Op, result: Result) -> bool:
    """The answers a guest cluster takes as "it cannot run any more"."""
    if op is Op.STATUS:
        return result is Result.OFF
    return op in (Op.OFF, Op.REBOOT) and result is Result.SUCCESS


async def _swept(
    hosts: HostGroup, op: Op, mapped: Mapped, decision: Decision, done: Done, deadline: float
) -> Done:
    """``done`` if every member's hypervisor agrees the VM is not running, else what is true."""
    swept = await hosts.sweep(mapped.domain, mapped.uuid_only, deadline - SWEEP_MARGIN)
    # A reboot leaves the VM running where it restarted it (the first of the hosts it acted
    # on): only other copies contradict it.
    restarted = decision.hosts[:1] if op is Op.REBOOT else ()
    elsewhere = [n for n in swept.active_on if n not in restarted]
    if elsewhere:
        where = ", ".join(map(str, elsewhere))
        if op is Op.STATUS:
            return Done(Result.SUCCESS, f"active on host {where} (started there just now)")
        return Done(Result.FAIL, f"{done.detail}; but it is active on host {where}: ask again")
    if swept.problem:
        return Done(Result.FAIL, f"{done.detail}; but not confirmed: {swept.problem}")
    return Done(done.result, f"{done.detail}; no member runs it")


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
