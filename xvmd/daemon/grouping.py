"""The host group in the running daemon: the CPG group, the core's ``HostGroup`` and the
inventory publisher, started and stopped in order, and what ``xvmd status`` shows of them.

Rules:
1. Only in cluster mode with a cluster.conf: ``--local`` and ``--no-ccs`` keep a host alone.
2. One CPG group per guest cluster, named after it, on the hosts' own corosync.
3. The inventory follows the hypervisor through its lifecycle events when it has them, and a
   poll every ``POLL_INTERVAL`` seconds when it has not; each new view and each reload
   publishes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from xvmd.core.domcache import DomainCache
from xvmd.core.executor import BackendRunner
from xvmd.core.hostgroup import HostGroup
from xvmd.core.inventory import POLL_INTERVAL, Publisher
from xvmd.core.policy import Policy
from xvmd.daemon.placestore import PlacementStore
from xvmd.daemon.prover import History, Prover
from xvmd.hosts.group import MAX_NAME, CpgGroup, GroupView
from xvmd.hosts.messages import Inventory, Proof, ProofKind, ProofRecord
from xvmd.quorum import QuorumStatus

log = logging.getLogger("xvmd.hosts")

CONFIRM_WAIT = 5.0  # seconds an operator's confirmation may take to come back over CPG


def _refused(why: str) -> dict[str, Any]:
    return {"ok": False, "error": why}


def group_name(cluster: str) -> bytes:
    """The CPG group of a guest cluster: one per cluster, so that two guest clusters served
    by the same hosts never mix their VMs. A name longer than CPG allows is cut to a prefix
    and a digest of the whole, so two long names still make two groups."""
    name = f"xvmd:{cluster}".encode()
    if len(name) <= MAX_NAME:
        return name
    return name[: MAX_NAME - 17] + b"#" + hashlib.sha256(name).hexdigest()[:16].encode()


class GroupRuntime:
    def __init__(
        self,
        cluster: str,
        runner: BackendRunner,
        cache: DomainCache,
        *,
        policy: Callable[[], Policy],
        quorum: Callable[[], QuorumStatus] | None,
        state: str | None = None,
        make_group: Callable[..., CpgGroup] = CpgGroup,
        history: History | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.runner = runner
        self.cache = cache
        self._quorum = quorum
        self.hosts = HostGroup(runner, policy=policy, quorum=quorum, now=loop.time)
        self.cpg = make_group(group_name(cluster), self.hosts.on_message, self._on_view)
        self.hosts.link = self.cpg
        self.publisher = Publisher(
            runner,
            self._send_inventory,
            node=lambda: self.cpg.local_nodeid,
            name=self._node_name,
            policy=policy,
            departed=self.hosts.table.departed,
            proven=self.hosts.table.proofs,
        )
        self._task: asyncio.Task[None] | None = None
        self._watching = False
        self.store = PlacementStore(state, self.hosts.table) if state else None
        self._saver: asyncio.Task[None] | None = None
        self.prover = Prover(self.hosts, history) if history is not None else Prover(self.hosts)
        self._proving: asyncio.Task[None] | None = None

    def _on_view(self, view: GroupView) -> None:
        self.hosts.on_membership(view)
        if view.connected:
            log.info("host group %s: members %s", self.cpg.name.decode(), list(view.members))
            self.publisher.changed()  # a newcomer must hear everyone
        else:
            log.warning(
                "host group %s: not joined; requests get no answer here", self.cpg.name.decode()
            )

    def _send_inventory(self, inv: Inventory) -> None:
        self.hosts.send(inv)

    def _node_name(self) -> str:
        status = self._quorum() if self._quorum is not None else None
        me = self.cpg.local_nodeid
        for member in status.members if status is not None else ():
            if member.nodeid == me and member.name:
                return member.name
        return socket.gethostname()

    def changed(self) -> None:
        """Publish again soon (a reload, or anything that may change the inventory)."""
        self.publisher.changed()

    async def start(self) -> None:
        if self.store is not None:
            await self.store.restore()  # before the first view: VMs of hosts still away
            self._saver = asyncio.create_task(self.store.run())
        self._watching = self.cache.events  # the daemon subscribed the cache before this
        self.cache.subscribe(self.publisher.changed)
        poll = None if self._watching else POLL_INTERVAL
        if not self._watching:
            log.info("hypervisor sends no domain events: reading its domains every %gs", poll)
        self._task = asyncio.create_task(self.publisher.run(poll))
        self._proving = asyncio.create_task(self.prover.run())
        await self.cpg.start()

    async def stop(self) -> None:
        """After the drain: leave the group, stop publishing and looking for proofs."""
        await self.hosts.stop()
        await self.cpg.stop()
        for task in (self._task, self._saver, self._proving):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.store is not None:
            await self.store.save_now()

    async def confirm_down(self, host: str, by: str) -> dict[str, Any]:
        """An operator's word that ``host`` is down: accepted only for a known host that has
        left the group; spread to every member over CPG, and in force once it came back to
        this host in the agreed order (so every member applies it at the same point)."""
        table = self.hosts.table
        node = table.node_named(host)
        me = self.cpg.local_nodeid
        if node is None:
            known = ", ".join(table.name_of(n) for n in table.unproven()) or "none"
            return _refused(
                f"no host {host!r} is known to the group (hosts left unproven: {known})"
            )
        if node in table.members:
            return _refused(
                f"host {host} (node {node}) is a member of the group: it is up, and only a host "
                "that has left can be confirmed down"
            )
        if me is None or not self.cpg.view.connected:
            return _refused("this host is not in the group: the confirmation could not be spread")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        detail = f"confirmed down by {by} on {self._node_name()} at {stamp}"
        if not self.hosts.send(Proof(me, ProofRecord(node, ProofKind.OPERATOR, detail))):
            return _refused("the group did not take the message; try again")
        for _ in range(int(CONFIRM_WAIT / 0.05)):
            proof = table.proof(node)
            if proof is not None:
                return {
                    "ok": True,
                    "node": node,
                    "host": table.name_of(node),
                    "detail": proof.detail,
                }
            await asyncio.sleep(0.05)
        return _refused("the confirmation was sent but has not come back yet; check xvmd status")

    def status(self) -> dict[str, Any]:
        """The group for the status document: members, each one's devices and domain count,
        where the cluster's VMs are, and the answers left to other hosts."""
        table = self.hosts.table
        return {
            "group": self.cpg.name.decode(errors="replace"),
            "joined": self.cpg.view.connected,
            "node": self.cpg.local_nodeid,
            "events": self._watching,
            "members": [
                {
                    "node": inv.node,
                    "name": inv.name,
                    "devices": [d.device for d in inv.devices],
                    "domains": len(inv.domains),
                    "active": sorted(d.name for d in inv.domains if d.active),
                }
                for inv in table.inventories()
            ],
            "pending": list(table.pending),
            "departed": [{"vm": d.name, "uuid": d.uuid, "node": d.node} for d in table.departed()],
            "declined": self.hosts.declined_total,
            "recent_declined": list(self.hosts.declined),
            "bad_messages": dict(self.hosts.bad),
            "proofs": [
                {
                    "node": p.host,
                    "name": table.name_of(p.host),
                    "kind": str(p.kind),
                    "detail": p.detail,
                }
                for p in table.proofs()
            ],
            "fencing_history_problem": self.prover.unavailable,
            "state": {
                "path": self.store.path if self.store else None,
                "error": self.store.last_error if self.store else None,
            },
        }
