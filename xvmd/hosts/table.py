"""Where every VM is, as the group has said it (pure): members, their inventories, and where
each VM was last seen active.

Rules:
1. Fed only by what CPG delivers (membership views and inventories, in agreed order), so every
   member that saw the same messages holds the same table and reaches the same decisions.
2. A member's inventory is the truth about that member; an inventory from a host that is not a
   member (sent before it left) is ignored, and a member that left takes its inventory along.
3. Where a VM was last seen active is remembered after its host leaves: such a VM may still run
   there, so it is never reported off on the strength of not being seen. Every member believes
   what the others' inventories say of hosts that are away (``departed``): it can only make
   answers more careful, and it may be news from while this member was cut off.
4. A proof that a host is down is taken only from a ``Proof`` message, never an inventory, and
   any host joining voids every proof: partitions that meet again may hold different news.
5. Bounded: at most ``MAX_REMEMBERED`` VMs are remembered as once seen.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xvmd.backend import is_uuid
from xvmd.hosts.messages import Departed, DomainRecord, Inventory, ProofRecord

MAX_REMEMBERED = 65536


@dataclass(frozen=True, slots=True)
class Where:
    """One VM across the group, as far as the table knows."""

    active_on: tuple[int, ...]  # members (with an inventory) where it is active, sorted
    defined_on: tuple[int, ...]  # members where it is defined in any state, sorted
    departed: tuple[int, ...]  # hosts it was last seen active on that have not published since
    known: bool  # seen in some inventory since this host joined (or told so)
    proven: tuple[int, ...] = ()  # hosts it was last seen active on, proven down since


class Table:
    def __init__(self) -> None:
        self._members: frozenset[int] = frozenset()
        self._inventories: dict[int, Inventory] = {}
        # uuid -> {node: name}: where each VM was last seen active, until that node says not
        self._active_at: dict[str, dict[int, str]] = {}
        self._seen: OrderedDict[str, str] = OrderedDict()  # uuid -> name, once seen
        self._named: dict[str, set[str]] = {}  # name -> uuids in _seen
        self._names: dict[int, str] = {}  # node -> the name it published
        self._left_at: dict[int, float] = {}  # node -> when it left (this host's clock)
        self._joined_at: dict[int, float] = {}  # node -> when it last joined
        self._proofs: dict[int, ProofRecord] = {}  # node -> why it is known to be down
        self.version = 0  # grows with every change worth saving (``memory``)

    # -- what CPG delivers -------------------------------------------------------------------

    def membership(self, members: Iterable[int], now: float = 0.0) -> None:
        """A new view: members that left take their inventories along; new ones are pending.
        Any host joining voids every proof: it may bring news this partition never had (a
        proven host that came back and went again while they were apart), and a proof must be
        found again (the host cluster's history is read again; an operator confirms again)."""
        new = frozenset(members)
        for node in self._members - new:
            self._left_at[node] = now
        joined = new - self._members
        for node in joined:
            self._joined_at[node] = now
        if joined:
            self._proofs.clear()
        self._members = new
        self.version += 1
        for node in list(self._inventories):
            if node not in self._members:
                del self._inventories[node]

    def prove(self, proof: ProofRecord) -> bool:
        """Record that a host is down; False (ignored) while it is a member, or known already."""
        if proof.host in self._members or proof.host in self._proofs:
            return False
        self._proofs[proof.host] = proof
        self.version += 1
        return True

    def inventory(self, inv: Inventory) -> bool:
        """Apply ``inv``; False when it was ignored (its sender is not a member)."""
        if inv.node not in self._members:
            return False
        self._inventories[inv.node] = inv
        self._names[inv.node] = inv.name
        self.version += 1
        active = {d.uuid: d.name for d in inv.domains if d.active}
        for uuid, nodes in list(self._active_at.items()):
            if inv.node in nodes and uuid not in active:
                del nodes[inv.node]  # its host says it is no longer active there
                if not nodes:
                    del self._active_at[uuid]
        for uuid, name in active.items():
            self._active_at.setdefault(uuid, {})[inv.node] = name
        for d in inv.domains:
            self._remember(d.uuid, d.name)
        for gone in inv.departed:
            # Believed whenever its host is away: it can only make answers more careful, and
            # it may be news from while this host was cut off (a host that came back to the
            # others, ran the VM and went again).
            if gone.node not in self._members:
                self._active_at.setdefault(gone.uuid, {})[gone.node] = gone.name
                self._remember(gone.uuid, gone.name)
        return True

    # -- what survives a restart ------------------------------------------------------------

    def memory(self) -> dict[str, Any]:
        """Where VMs were last seen active, what was seen, hosts' names and when they left, as
        plain data (JSON). Proofs are not kept: after a restart they must be found again, since
        a host may have come back and gone again meanwhile."""
        return {
            "active_at": [
                [uuid, node, name]
                for uuid, nodes in sorted(self._active_at.items())
                for node, name in sorted(nodes.items())
            ],
            "seen": [[uuid, name] for uuid, name in self._seen.items()],
            "names": {str(n): name for n, name in sorted(self._names.items())},
            "left_at": {str(n): t for n, t in sorted(self._left_at.items())},
        }

    def restore(self, memory: dict[str, Any]) -> None:
        """Take back what ``memory`` kept (into a table that has seen nothing yet). Raises
        ValueError when it is not what ``memory`` makes."""
        try:
            active = [(str(u), int(n), str(name)) for u, n, name in memory["active_at"]]
            seen = [(str(u), str(name)) for u, name in memory["seen"]]
            names = {int(n): str(name) for n, name in memory["names"].items()}
            left = {int(n): float(t) for n, t in memory["left_at"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a placement memory: {exc!r}") from None
        for uuid, name in seen[-MAX_REMEMBERED:]:
            self._remember(uuid, name)
        for uuid, node, name in active:
            self._active_at.setdefault(uuid, {})[node] = name
            self._remember(uuid, name)
        self._names.update(names)
        self._left_at.update(left)

    def _remember(self, uuid: str, name: str) -> None:
        old = self._seen.get(uuid)
        if old != name:
            if old is not None:
                self._unname(uuid, old)
            self._named.setdefault(name, set()).add(uuid)
        self._seen[uuid] = name
        self._seen.move_to_end(uuid)
        if len(self._seen) > MAX_REMEMBERED:
            self._unname(*self._seen.popitem(last=False))

    def _unname(self, uuid: str, name: str) -> None:
        uuids = self._named.get(name, set())
        uuids.discard(uuid)
        if not uuids:
            self._named.pop(name, None)

    # -- questions ---------------------------------------------------------------------------

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self._members))

    @property
    def pending(self) -> tuple[int, ...]:
        """Members that have not published an inventory since they joined."""
        return tuple(sorted(self._members - set(self._inventories)))

    def published(self, node: int) -> bool:
        return node in self._inventories

    def inventories(self) -> tuple[Inventory, ...]:
        return tuple(self._inventories[n] for n in sorted(self._inventories))

    def candidates(self, fingerprint: str) -> tuple[int, ...]:
        """Members serving a device whose key has ``fingerprint``, sorted."""
        return tuple(
            sorted(
                node
                for node, inv in self._inventories.items()
                if any(d.fingerprint == fingerprint for d in inv.devices)
            )
        )

    def where(self, domain: str, uuid_only: bool = False) -> Where:
        """``domain`` is a libvirt name (exact) or, in UUID form, a UUID; ``uuid_only``: a
        UUID and nothing else (the policy's ``Mapped.uuid_only``)."""
        active, defined, uuids = [], [], set()
        for node, inv in sorted(self._inventories.items()):
            for d in inv.domains:
                if _matches(d, domain, uuid_only):
                    defined.append(node)
                    uuids.add(d.uuid)
                    if d.active:
                        active.append(node)
        uuids |= self._remembered(domain, uuid_only)
        gone = {
            node
            for uuid in uuids
            for node in self._active_at.get(uuid, {})
            if not self.published(node)
        }
        proven = {node for node in gone if node in self._proofs}
        known = bool(defined) or any(u in self._seen for u in uuids)
        return Where(
            tuple(active),
            tuple(sorted(set(defined))),
            tuple(sorted(gone - proven)),
            known,
            tuple(sorted(proven)),
        )

    def _remembered(self, domain: str, uuid_only: bool) -> set[str]:
        """UUIDs of VMs no inventory holds now that ``domain`` names."""
        lowered = domain.lower()
        if is_uuid(domain) and lowered in self._seen:
            return {lowered}
        if uuid_only:
            return set()
        return set(self._named.get(domain, ()))

    def node_named(self, host: str) -> int | None:
        """The node a host's name (as it published it) or node id names; None: unknown."""
        for node, name in self._names.items():
            if name == host:
                return node
        if host.isdigit() and int(host) in (self._names.keys() | self._members):
            return int(host)
        return None

    def name_of(self, node: int) -> str:
        return self._names.get(node, f"node {node}")

    def left_at(self, node: int) -> float | None:
        return self._left_at.get(node) if node not in self._members else None

    def joined_at(self, node: int) -> float | None:
        return self._joined_at.get(node)

    def proof(self, node: int) -> ProofRecord | None:
        return self._proofs.get(node)

    def proofs(self) -> tuple[ProofRecord, ...]:
        return tuple(self._proofs[n] for n in sorted(self._proofs))

    def unproven(self) -> tuple[int, ...]:
        """Hosts that left with VMs last seen active there and no proof that they are down:
        what a prover looks for."""
        nodes = {n for where in self._active_at.values() for n in where}
        return tuple(sorted(n for n in nodes if n not in self._members and n not in self._proofs))

    def departed(self) -> tuple[Departed, ...]:
        """What this host publishes about VMs last active on hosts that left."""
        return tuple(
            Departed(name, uuid, node)
            for uuid, nodes in sorted(self._active_at.items())
            for node, name in sorted(nodes.items())
            if node not in self._members
        )

    def union(self) -> tuple[DomainRecord, ...]:
        """Every domain of every member once, with its state where it is active (the lowest
        node id among several), else as its lowest-numbered host has it, sorted by name."""
        best: dict[str, tuple[bool, int, DomainRecord]] = {}
        for node, inv in self._inventories.items():
            for d in inv.domains:
                rank = (not d.active, node)
                held = best.get(d.uuid)
                if held is None or rank < held[:2]:
                    best[d.uuid] = (*rank, d)
        return tuple(sorted((r for _, _, r in best.values()), key=lambda r: (r.name, r.uuid)))


def _matches(d: DomainRecord, domain: str, uuid_only: bool) -> bool:
    if is_uuid(domain) and d.uuid == domain.lower():
        return True
    return not uuid_only and d.name == domain
