"""Carrying out an authenticated request: who asks, what it may reach, what the backend did.

Rules:
1. Runs only after the challenge-response succeeded and quorum allowed it (see pipeline).
2. The answer queued on the session is what the backend proved (see ``xvmd.core.operations``);
   a refusal is PERM, a backend that could not tell is FAIL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from xvmd.backend import BackendError
from xvmd.core.executor import BackendRunner, OutOfTime
from xvmd.core.intake import Proceed
from xvmd.core.policy import Policy, Refused
from xvmd.protocol.session import ServerSession
from xvmd.protocol.wire import FenceRequest, Op, Result

if TYPE_CHECKING:  # the multi-host types load only where several hosts serve
    from xvmd.core.hostgroup import HostGroup
    from xvmd.hosts.rounds import Round


@dataclass(frozen=True, slots=True)
class Admitted:
    """An admitted request and what its session needs, all fixed when it started."""

    req: FenceRequest
    ok: Proceed
    policy: Policy  # the policy it started under: a reload does not change it midway
    who: str  # the requester: callback address or TCP peer
    started: float
    device: str | None  # the device whose scope applies (None: no cluster.conf)
    round: Round | None = None  # multi-host: what the group decided (None: this host alone)

    @classmethod
    def of(
        cls, req: FenceRequest, ok: Proceed, policy: Policy, who: str, started: float
    ) -> Admitted:
        scope = policy.scope_for(ok.scope_key)
        return cls(req, ok, policy, who, started, scope.device if scope is not None else None)


@dataclass(frozen=True, slots=True)
class Done:
    """What was answered, a detail for the log, and the mapped domain when it differs."""

    result: Result
    detail: str
    domain: str = ""


async def carry_out(
    runner: BackendRunner,
    job: Admitted,
    session: ServerSession,
    deadline: float,
    hosts: HostGroup | None = None,
) -> Done:
    """Carry out ``job``; the answer is queued on ``session``."""
    requester = job.policy.requester(job.who)
    if isinstance(requester, Refused):
        session.send_result(Result.PERM)
        return Done(Result.PERM, requester.reason)
    decision = job.round.decision if job.round is not None else None
    if hosts is not None and decision is not None:
        from xvmd.core.remote import carry_out_in_group  # several hosts only: loaded on first use

        return await carry_out_in_group(hosts, runner, job, decision, session, deadline)
    if job.req.op is Op.HOSTLIST:
        return await _hostlist(runner, job, session, deadline)
    done = await act(runner, job, deadline)
    session.send_result(done.result)
    return done


async def _hostlist(
    runner: BackendRunner, job: Admitted, session: ServerSession, deadline: float
) -> Done:
    try:
        records = await runner.hostlist(deadline)
    except OutOfTime:
        session.send_result(Result.FAIL)
        return Done(Result.FAIL, "no answer from the hypervisor in time")
    except BackendError as exc:
        session.send_result(Result.FAIL)
        return Done(Result.FAIL, f"hypervisor error: {exc}")
    shown = job.policy.hostlist(job.ok.scope_key, records)
    session.send_hostlist(shown)
    return Done(Result.SUCCESS, f"{len(shown)} of {len(records)} domains")


async def act(runner: BackendRunner, job: Admitted, deadline: float) -> Done:
    """A power action or a query on one domain (or none: null, devstatus) on this host's
    hypervisor; the caller sends the result."""
    req = job.req
    allowed, exact, uuid_only = None, False, False
    target = req.domain
    if req.op.needs_domain:
        mapped = job.policy.map(job.ok.scope_key, req.domain)
        if isinstance(mapped, Refused):
            return Done(Result.PERM, mapped.reason)
        target, allowed = mapped.domain, mapped.allows
        exact, uuid_only = mapped.exact, mapped.uuid_only
    outcome = await runner.fence(
        req.op, target, deadline, allowed, exact=exact, uuid_only=uuid_only
    )
    domain = outcome.domain.name if outcome.domain is not None else target
    return Done(outcome.result, outcome.detail, domain if domain != req.domain else "")
