"""Sweeps: before a host answers that a VM is not running, every member asks its hypervisor.

The group's table follows each hypervisor through its lifecycle events and one CPG delivery,
so it lags by a few milliseconds: a VM started on another host just before a request may not
be in it yet. A negative answer (``status`` OFF, success to ``off`` or ``reboot``) therefore
waits for a sweep: the responder multicasts a ``Sweep``; every member reads its own hypervisor
when the sweep arrives, which is after the request arrived, and answers with a ``Swept``. The
answer stands only if every member that was in the group when the sweep was sent said the VM
is inactive there; a member that leaves, cannot ask its hypervisor or does not answer in time
makes the answer a failure, never an assumption.

``Sweeps`` is the bookkeeping of the sweeps in flight (no I/O); ``read`` is what a member does
when a sweep arrives.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

from xvmd.backend import BackendError, DomainNotFound, DomainState
from xvmd.core.executor import BackendRunner, OutOfTime
from xvmd.hosts.messages import Seen, Sweep, Swept

READ_TIMEOUT = 5.0
"""Seconds a member gives its hypervisor to say whether it runs a swept VM."""


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What the members said: where the VM is active, and what kept the sweep from being
    conclusive (a member unknown, gone or silent); ``problem`` is "" when it was."""

    active_on: tuple[int, ...]
    problem: str = ""


@dataclass
class _Pending:
    awaited: frozenset[int]
    future: asyncio.Future[SweepResult]
    replies: dict[int, Swept] = field(default_factory=dict)

    def settle(self, problem: str = "") -> None:
        if self.future.done():
            return
        active = tuple(sorted(n for n, r in self.replies.items() if r.seen is Seen.ACTIVE))
        unknown = [f"host {n}: {r.detail}" for n, r in sorted(self.replies.items())
                   if r.seen is Seen.UNKNOWN]  # fmt: skip
        if not problem and unknown:
            problem = "; ".join(unknown)
        self.future.set_result(SweepResult(active, problem))


class Sweeps:
    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._next = 0

    def __len__(self) -> int:
        """Sweeps in flight."""
        return len(self._pending)

    def start(self, members: frozenset[int]) -> tuple[int, asyncio.Future[SweepResult]]:
        """A new sweep awaiting ``members``: its ident and the future of its result."""
        self._next += 1
        future: asyncio.Future[SweepResult] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = _Pending(members, future)
        return self._next, future

    def end(self, ident: int) -> None:
        self._pending.pop(ident, None)

    def missing(self, ident: int) -> list[int]:
        pending = self._pending.get(ident)
        return sorted(pending.awaited - set(pending.replies)) if pending is not None else []

    def answered(self, msg: Swept) -> None:
        """A member's answer to one of this host's sweeps (others' are none of its business)."""
        pending = self._pending.get(msg.ident)
        if pending is None or msg.node not in pending.awaited:
            return
        pending.replies[msg.node] = msg
        if pending.awaited <= set(pending.replies):
            pending.settle()

    def membership(self, members: frozenset[int]) -> None:
        """A member that leaves before it answered may run the VM: those sweeps fail."""
        for pending in self._pending.values():
            gone = sorted(pending.awaited - members - set(pending.replies))
            if gone:
                hosts = ", ".join(map(str, gone))
                pending.settle(f"host {hosts} left before saying whether it runs the VM")


async def read(runner: BackendRunner, sweep: Sweep, me: int, now: float) -> Swept:
    """This member's answer: its hypervisor asked now, not the event-fed cache."""
    lookup = functools.partial(
        runner.backend.lookup, sweep.domain, exact=True, uuid_only=sweep.uuid_only
    )
    try:
        dom = await runner.call(now + READ_TIMEOUT, lookup)
    except DomainNotFound:
        return Swept(sweep.ident, sweep.origin, me, Seen.INACTIVE, "not defined here")
    except OutOfTime:
        return Swept(sweep.ident, sweep.origin, me, Seen.UNKNOWN, "its hypervisor did not answer")
    except BackendError as exc:
        return Swept(sweep.ident, sweep.origin, me, Seen.UNKNOWN, f"hypervisor error: {exc}")
    seen = Seen.INACTIVE if dom.state is DomainState.SHUTOFF else Seen.ACTIVE
    return Swept(sweep.ident, sweep.origin, me, seen, dom.state.label)
