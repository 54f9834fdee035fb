"""The host group as the fencing core uses it: claims, rounds, forwards, and the table.

Rules:
1. No connect-back before the round is decided: a host that admitted a request multicasts a
   ``Claim`` and waits; when the first claim of the round is delivered, every member decides
   the same (``xvmd.hosts.rounds``), exactly one serves it and the others let it go.
2. The responder ends every round it was given with ``Done``, however it went, so that a
   retransmit is decided afresh on every member at the same point of the order.
3. After a join (this host's or another's), rounds opened before it are unknown on one side:
   a host that decided it answers a round while it has not yet heard every member's inventory
   since the join does not connect back (it ends the round with ``Done``; the client's
   retransmit is served once the inventories are in, within a CPG round trip). Found by the
   randomized run: a host that had just joined decided, alone, a round the others had decided
   already, and a request got two connect-backs.
4. A forwarded operation is checked again where it runs (quorum, the cluster's mapping) and
   answered with an ``Outcome``; a forward that gets none within its budget fails.
5. A peer's message that cannot be used, or that claims to come from another host than the one
   CPG says sent it, is dropped, counted by reason and logged (rate-limited).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xvmd.core.executor import BackendRunner
from xvmd.core.limits import Throttle, Ticket
from xvmd.core.policy import Gate, Policy, quorum_gate
from xvmd.core.sweeps import SweepResult, Sweeps, read
from xvmd.hosts.codec import decode, encode
from xvmd.hosts.messages import (
    BadMessage,
    Claim,
    Done,
    Forward,
    Inventory,
    Message,
    Outcome,
    Proof,
    Sweep,
    Swept,
)
from xvmd.hosts.rounds import Round, Rounds, round_key
from xvmd.hosts.table import Table
from xvmd.protocol.wire import FenceRequest, Op, Result
from xvmd.quorum import QuorumStatus

log = logging.getLogger("xvmd.hosts")

FORWARD_MARGIN = 1.0  # seconds of a forward's budget kept for the outcome's way back
RECENT_DECLINED = 50  # answers left to another host, kept for `xvmd status`
BAD_MESSAGE_INTERVAL = 60.0  # seconds between two log lines about bad messages from one host


class Link(Protocol):
    """What the core needs of the CPG group (``xvmd.hosts.group.CpgGroup``)."""

    @property
    def local_nodeid(self) -> int | None: ...

    def send(self, payload: bytes) -> bool: ...


class View(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def members(self) -> tuple[int, ...]: ...


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request this host admitted and claimed; its session waits for the round."""

    req: FenceRequest
    ticket: Ticket
    start: Callable[[Round], None]  # serve it (this host answers)
    drop: Callable[[], None]  # let it go (another host answers, or none can be asked)


class HostGroup:
    def __init__(
        self,
        runner: BackendRunner,
        *,
        policy: Callable[[], Policy],
        quorum: Callable[[], QuorumStatus] | None,
        now: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.table = Table()
        self.rounds = Rounds()
        self._policy = policy
        self._quorum = quorum
        self._now = now
        self._wall = wall  # when hosts leave and join: compared with the host cluster's fencing
        self.link: Link | None = None
        self.connected = False
        self._waiting: OrderedDict[str, Waiting] = OrderedDict()
        self._forwards: dict[int, tuple[int, asyncio.Future[Outcome]]] = {}  # ident -> (to, …)
        self._next_ident = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.bad: Counter[str] = Counter()
        self._bad_lines = Throttle(BAD_MESSAGE_INTERVAL)
        self.declined: deque[dict[str, Any]] = deque(maxlen=RECENT_DECLINED)
        self.declined_total = 0
        self.serve_unclaimed: Callable[[Round], None] | None = None  # set by the service
        self.sweeps = Sweeps()
        self.catching_up = False  # a join since the last time every member's inventory was in

    @property
    def me(self) -> int | None:
        return self.link.local_nodeid if self.link is not None else None

    def send(self, msg: Message) -> bool:
        if self.link is None or not self.connected:
            return False
        try:
            return self.link.send(encode(msg))
        except ValueError as exc:  # too large for one message
            log.error("not sent to the group: %s", exc)
            return False

    # -- what CPG delivers ---------------------------------------------------------------------

    def on_membership(self, view: View) -> None:
        self.connected = view.connected
        members = view.members if view.connected else ()
        if set(members) - set(self.table.members) - {self.me}:
            self.catching_up = True  # rule 3
        self.table.membership(members, self._wall())
        self._caught_up()
        self.sweeps.membership(frozenset(members))
        for r in self.rounds.left(set(members)):
            log.info("round of %s ended: host %s left", _what(r.req), r.decision.responder)
        for ident, (to, fut) in list(self._forwards.items()):
            if not fut.done() and to not in members:
                fut.set_result(Outcome(ident, self.me or 0, to, int(Result.FAIL), "its host left"))
        if not view.connected:
            for packet in list(self._waiting):
                self._waiting.pop(packet).drop()

    def on_message(self, nodeid: int, payload: bytes) -> None:
        try:
            msg = decode(payload)
            _check_sender(msg, nodeid)
        except BadMessage as exc:
            self._bad(nodeid, str(exc))
            return
        if isinstance(msg, Inventory):
            self.table.inventory(msg)
            self._caught_up()
        elif isinstance(msg, Claim):
            self._claimed(msg)
        elif isinstance(msg, Done):
            self.rounds.done(msg.node, msg.request)
        elif isinstance(msg, Forward):
            if msg.to == self.me:
                self._spawn(self._run_forward(msg))
        elif isinstance(msg, Proof):
            self._proven(msg)
        elif isinstance(msg, Sweep):
            self._spawn(self._answer_sweep(msg))
        elif isinstance(msg, Swept):
            if msg.origin == self.me:
                self.sweeps.answered(msg)
        elif msg.origin == self.me:
            to, fut = self._forwards.get(msg.ident, (None, None))
            if fut is not None and not fut.done() and to == msg.node:
                fut.set_result(msg)

    def _proven(self, msg: Proof) -> None:
        record = msg.record
        if self.table.prove(record):
            log.warning(
                "host %d (%s) is proven down (%s, from host %d): %s",
                record.host,
                self.table.name_of(record.host),
                record.kind,
                msg.node,
                record.detail,
            )

    def _bad(self, nodeid: int, why: str) -> None:
        self.bad[why.split(":")[0][:40]] += 1
        n = self._bad_lines.hit(nodeid, self._now())
        if n is not None:
            more = f" ({n} more since the last report)" if n else ""
            log.warning("dropped a message from host %d: %s%s", nodeid, why, more)

    # -- claims and rounds ---------------------------------------------------------------------

    def propose(self, waiting: Waiting, claim: Claim) -> None:
        """Claim a request this host admitted; ``waiting`` is started or dropped once its round
        is decided."""
        packet = round_key(waiting.req)
        opened = self.rounds.open(packet)
        if opened is not None:  # decided already: a late copy of a round in progress
            self._decline(opened, waiting)
            return
        if packet in self._waiting or not self.send(claim):
            waiting.drop()
            return
        self._waiting[packet] = waiting

    def _claimed(self, claim: Claim) -> None:
        opened = self.rounds.claimed(claim, self.table)
        if opened is None:
            return
        waiting = self._waiting.pop(opened.packet, None)
        if not opened.decision.answers(self.me or -1):
            if waiting is not None:
                self._decline(opened, waiting)
            return
        if self.catching_up:  # rule 3
            if waiting is not None:
                self._decline(opened, waiting)
            log.info("%s: not answered here until every host's domains are in", _what(opened.req))
            self.finish(opened)
            return
        if waiting is not None:
            waiting.start(opened)
        elif self.serve_unclaimed is not None:
            self.serve_unclaimed(opened)  # our copy of the datagram is late, or lost
        else:
            self.finish(opened)

    def _caught_up(self) -> None:
        me = self.me
        if self.catching_up and all(n == me for n in self.table.pending):
            self.catching_up = False

    def _decline(self, opened: Round, waiting: Waiting) -> None:
        waiting.drop()
        d = opened.decision
        self.declined_total += 1
        self.declined.append({"request": _what(opened.req), "responder": d.responder, "why": d.why})
        log.debug("%s: host %s answers (%s)", _what(opened.req), d.responder, d.why)

    def finish(self, opened: Round) -> None:
        """This host, the round's responder, is done with it."""
        me = self.me
        if me is not None:
            self.send(Done(me, opened.packet))

    # -- forwards ------------------------------------------------------------------------------

    async def forward(
        self, to: int, op: Op, domain: str, uuid_only: bool, deadline: float
    ) -> tuple[Result, str]:
        """Have host ``to`` carry out ``op`` on ``domain``: its outcome, or a failure once
        ``deadline`` passed or the host left. The host gets the budget minus a margin, so its
        own answer (not our timeout) is what the client hears."""
        me = self.me
        self._next_ident += 1
        ident = self._next_ident
        budget_ms = max(0, int((deadline - self._now() - FORWARD_MARGIN) * 1000))
        fwd = Forward(ident, me or 0, to, op, domain, uuid_only, budget_ms)
        if me is None or to not in self.table.members or not self.send(fwd):
            return Result.FAIL, f"host {to} cannot be reached"
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._forwards[ident] = (to, fut)
        try:
            async with asyncio.timeout_at(deadline):
                outcome = await fut
        except TimeoutError:
            return Result.FAIL, f"no outcome from host {to} in time"
        finally:
            self._forwards.pop(ident, None)
        try:
            return Result(outcome.result), f"host {to}: {outcome.detail}"
        except ValueError:
            return Result.FAIL, f"host {to} answered {outcome.result}, which is no result"

    async def _run_forward(self, fwd: Forward) -> None:
        me = self.me
        if me is None:
            return
        result, detail = await self._act_forwarded(fwd)
        self.send(Outcome(fwd.ident, fwd.origin, me, int(result), detail))

    async def _act_forwarded(self, fwd: Forward) -> tuple[Result, str]:
        status = self._quorum() if self._quorum is not None else None
        gate, why = quorum_gate(fwd.op, status)
        if gate is not Gate.SERVE:
            return Result.FAIL, f"host {self.me}: {why}"
        policy = self._policy()
        deadline = self._now() + fwd.budget_ms / 1000
        outcome = await self.runner.fence(
            fwd.op, fwd.domain, deadline, policy.in_cluster, exact=True, uuid_only=fwd.uuid_only
        )
        log.info(
            "forwarded %s %r from host %d -> %s: %s",
            fwd.op.label,
            fwd.domain,
            fwd.origin,
            outcome.result.label,
            outcome.detail,
        )
        return outcome.result, outcome.detail

    # -- sweeps ------------------------------------------------------------------------------

    async def sweep(self, domain: str, uuid_only: bool, deadline: float) -> SweepResult:
        """Ask every member whether its hypervisor runs ``domain`` now (see core.sweeps)."""
        me = self.me
        members = frozenset(self.table.members)
        ident, future = self.sweeps.start(members)
        try:
            if me is None or not self.send(Sweep(ident, me, domain, uuid_only)):
                return SweepResult((), "the other hosts cannot be asked whether they run it")
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            hosts = ", ".join(map(str, self.sweeps.missing(ident)))
            return SweepResult((), f"host {hosts} did not say in time whether it runs it")
        finally:
            self.sweeps.end(ident)

    async def _answer_sweep(self, sweep: Sweep) -> None:
        me = self.me
        if me is not None:
            self.send(await read(self.runner, sweep, me, self._now()))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for packet in list(self._waiting):
            self._waiting.pop(packet).drop()


def _what(req: FenceRequest) -> str:
    return f"{req.op.label} {req.shown_target} seqno {req.seqno}"


def _check_sender(msg: Message, nodeid: int) -> None:
    """CPG says who sent a message; the message must not say otherwise."""
    claimed = msg.origin if isinstance(msg, Claim | Forward | Sweep) else msg.node
    if claimed != nodeid:
        raise BadMessage(f"spoofed: says it is from host {claimed}")
