"""Who may fence what: request targets mapped to libvirt domains, and refusals.

Rules:
1. Pure: built from a ccs snapshot (or from one key, without cluster.conf) and never changed;
   a reload builds a new Policy and the daemon swaps the reference.
2. With cluster.conf, a request may only touch the VM of a cluster node fenced through the
   device whose key verified it. A guest cluster can never power off an unrelated VM.
3. Without cluster.conf (``--no-ccs``) every domain is reachable, as with fence_virtd.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ccs.load import Snapshot
from ccs.validate import NodeTarget, ServedDevice, cluster_vms
from xvmd.backend import DomainInfo, is_uuid
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import HostRecord, Op
from xvmd.quorum import QuorumStatus


class Gate(enum.Enum):
    SERVE = "serve"
    DROP = "drop"  # no callback, no answer: an inquorate host must not take part
    FAIL = "fail"  # answer failure (monitor while inquorate: the device is unhealthy)


def quorum_gate(op: Op, status: QuorumStatus | None) -> tuple[Gate, str]:
    """What quorum allows for ``op``; ``status`` None means ``--local`` (no quorum checks)."""
    if status is None or status.quorate:
        return Gate.SERVE, ""
    if op.is_power_action:
        return Gate.DROP, f"this host is not quorate ({status.reason})"
    if op is Op.DEVSTATUS:
        return Gate.FAIL, f"not quorate: {status.reason}"
    return Gate.SERVE, ""


@dataclass(frozen=True, slots=True)
class Scope:
    """The domains one device (one key) may reach.

    Node names fold case (host names do); VM names compare exactly, as libvirt's do, so
    ``Tenant-Web`` is never taken for ``tenant-web``; UUIDs compare in any case.
    """

    device: str
    by_name: Mapping[str, NodeTarget]  # casefolded node names and altnames
    by_vm: Mapping[str, NodeTarget]  # VMs exactly as written in cluster.conf
    by_uuid: Mapping[str, NodeTarget] = field(default_factory=dict)  # UUID-form VMs, lower case

    @classmethod
    def of(cls, devices: Iterable[ServedDevice]) -> Scope:
        by_name: dict[str, NodeTarget] = {}
        by_vm: dict[str, NodeTarget] = {}
        by_uuid: dict[str, NodeTarget] = {}
        names = []
        for sd in devices:
            names.append(sd.name)
            for t in sd.nodes:
                for n in t.names:
                    by_name.setdefault(n.casefold(), t)
                by_vm.setdefault(t.domain, t)
                if is_uuid(t.domain):
                    by_uuid.setdefault(t.domain.lower(), t)
        return cls("+".join(names), by_name, by_vm, by_uuid)

    def holds(self, dom: DomainInfo | HostRecord) -> NodeTarget | None:
        """The node whose VM ``dom`` is, matched by its UUID or its exact name."""
        node = self.by_uuid.get(dom.uuid.lower())
        if node is not None:
            return node
        node = self.by_vm.get(dom.name)
        # A use_uuid VM is a UUID: a domain merely named like it is not that VM.
        return node if node is not None and not node.use_uuid else None

    def node_for(self, target: str) -> NodeTarget | None:
        """The node a request's target names: a node name, else one of the VMs."""
        return (
            self.by_name.get(target.casefold())
            or self.by_vm.get(target)
            or self.by_uuid.get(target.lower())
        )


@dataclass(frozen=True, slots=True)
class Mapped:
    """A request target turned into what to look up, how, and the node it belongs to.

    ``exact``: no case-insensitive fallback; a UUID-form VM matches by name or UUID, and
    refuses to guess when those are two domains. ``uuid_only``: match by UUID alone.
    """

    domain: str
    node: NodeTarget | None
    scope: Scope | None
    exact: bool = False
    uuid_only: bool = False

    def allows(self, dom: DomainInfo | None) -> bool:
        """Final check on the domain libvirt resolved (None: no such domain)."""
        if self.scope is None:
            return True
        if dom is None:
            return self.node is not None  # a known node's VM may be absent: answer as usual
        return self.scope.holds(dom) is not None


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


@dataclass(frozen=True)
class Policy:
    keys: tuple[Key, ...]
    scopes: Mapping[int, Scope] = field(default_factory=dict)  # id(key) -> scope
    everything: Scope | None = None  # all served devices, for unsigned requests
    cluster: str | None = None
    version: int | None = None
    requesters: Mapping[str, str] | None = None  # address -> node; None: not checked
    # Every VM of the cluster, through any host's device (UUID-form ones lower case): what a
    # forwarded operation may reach here. None: no cluster.conf, anything may be reached.
    cluster_vms: frozenset[str] | None = None

    @classmethod
    def unrestricted(cls, keys: Sequence[Key]) -> Policy:
        return cls(tuple(keys))

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> Policy:
        keys, scopes = [], {}
        for sd in snap.plan.devices:
            key = Key(sd.key)
            keys.append(key)
            scopes[id(key)] = Scope.of([sd])
        return cls(
            tuple(keys),
            scopes,
            Scope.of(snap.plan.devices),
            snap.cluster.name,
            snap.version,
            snap.plan.requesters,
            cluster_vms(snap.cluster),
        )

    @property
    def restricted(self) -> bool:
        return self.everything is not None

    def scope_for(self, key: Key | None) -> Scope | None:
        if not self.restricted:
            return None
        if key is None:
            return self.everything
        return self.scopes.get(id(key), self.everything)

    def in_cluster(self, dom: DomainInfo | None) -> bool:
        """Whether ``dom`` is a VM of the cluster (None, no such domain: answered as usual)."""
        if self.cluster_vms is None or dom is None:
            return True
        return dom.uuid.lower() in self.cluster_vms or dom.name in self.cluster_vms

    def requester(self, address: str | None) -> str | Refused | None:
        """The cluster node sending from ``address``; Refused when it is none; None when
        requesters are not checked (no cluster.conf, or names were not resolved)."""
        if self.requesters is None:
            return None
        try:
            canonical = str(ipaddress.ip_address(address or ""))
        except ValueError:
            canonical = address or "?"
        node = self.requesters.get(canonical)
        if node is None and canonical.startswith("::ffff:"):
            node = self.requesters.get(canonical[7:])
        if node is None:
            return Refused(f"requester {address} is no node of cluster {self.cluster!r}")
        return node

    def map(self, key: Key | None, target: str) -> Mapped | Refused:
        scope = self.scope_for(key)
        if scope is None:
            return Mapped(target, None, None)
        node = scope.node_for(target)
        if node is not None:
            # Look up the VM as the map writes it, never the request's spelling of it.
            return Mapped(node.domain, node, scope, exact=True, uuid_only=node.use_uuid)
        if is_uuid(target):
            # The map may name the VM while the request names its UUID: decide after lookup.
            return Mapped(target, None, scope, exact=True, uuid_only=True)
        return Refused(
            f"{target!r} is no node or VM of cluster {self.cluster!r} fenced through "
            f"device {scope.device}"
        )

    def hostlist(self, key: Key | None, records: Iterable[HostRecord]) -> list[HostRecord]:
        scope = self.scope_for(key)
        if scope is None:
            return list(records)
        return [r for r in records if scope.holds(r) is not None]
