"""Cross-checks over a parsed cluster, and the plan for this host: devices, keys, node -> VM.

Rules:
1. Pure: key files arrive as ``KeyState`` values read by ``ccs.source``.
2. Which devices this host serves: the ones named explicitly (``-D`` or
   ``<fence_xvmd device=...>``), else every fence_xvm device whose key file exists here.
   Other hosts' key files are normally absent, so a missing key only matters for a device
   this host was told to serve.
"""

from __future__ import annotations

import enum
import re
import stat
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .crosscheck import structure
from .issues import Code, Issue
from .limits import MAX_KEY_LEN
from .model import Cluster, ClusterNode, DeviceRef, FenceDevice
from .parse import MAX_DOMAIN_BYTES, parse_bool

# The canonical 8-4-4-4-12 UUID form, any case: the same test as the daemon's ``is_uuid``
# (ccs may not import xvmd).
_UUID_FORM = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


class KeyProblem(enum.Enum):
    """Why a key file could not be read (one owner: ``ccs.source.read_key`` sets it)."""

    MISSING = "missing"
    NOT_REGULAR = "not a regular file"
    DENIED = "unreadable: permission denied"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class KeyState:
    """What ``ccs.source`` found at a key path. ``data`` is None when it could not be read."""

    path: str
    data: bytes | None
    problem: KeyProblem | None = None  # set exactly when data is None
    size: int = 0
    mode: int = 0o600
    detail: str = ""  # for UNREADABLE: the system's reason

    @property
    def reason(self) -> str:
        """The problem in words: "missing", "unreadable: WHY", ..."""
        if self.problem is KeyProblem.UNREADABLE:
            return f"unreadable: {self.detail or 'error'}"
        return self.problem.value if self.problem is not None else "empty"


@dataclass(frozen=True, slots=True)
class NodeTarget:
    """One cluster node fenced through a served device: the names that reach it, its VM."""

    node: str
    nodeid: int
    names: tuple[str, ...]
    domain: str
    use_uuid: bool
    line: int


@dataclass(frozen=True, slots=True)
class ServedDevice:
    device: FenceDevice
    key: bytes
    nodes: tuple[NodeTarget, ...]

    @property
    def name(self) -> str:
        return self.device.name


@dataclass(frozen=True, slots=True)
class NotServed:
    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class HostPlan:
    devices: tuple[ServedDevice, ...]
    not_served: tuple[NotServed, ...]
    # Address -> node name, for every node of the cluster: who may send requests.
    # None when names were not resolved (no requester check is possible).
    requesters: Mapping[str, str] | None = None


def vm_for(node: ClusterNode, ref: DeviceRef) -> str:
    """The VM a ``<device>`` entry fences: ``domain=``, else a non-numeric ``port=``, else the
    node's name (what fenced and Pacemaker pass as the plug when none is configured)."""
    attrs = ref.attrs
    if attrs.get("domain"):
        return attrs["domain"]
    port = attrs.get("port", "")
    if port and not port.isdigit():
        return port
    return node.name


def cluster_vms(cluster: Cluster) -> frozenset[str]:
    """Every VM a fence_xvm device of the cluster fences, whichever host serves it (UUID-form
    VMs lower case): what a host may be asked to act on for another host's device."""
    xvm = {d.name for d in cluster.devices if d.is_xvm}
    vms = set()
    for node, refs in (
        (node, [r for m in node.methods for r in m.devices]) for node in cluster.nodes
    ):
        for ref in refs:
            if ref.name in xvm:
                vm = vm_for(node, ref)
                vms.add(vm.lower() if _UUID_FORM.fullmatch(vm) else vm)
    return frozenset(vms)


def _use_uuid(ref: DeviceRef, device: FenceDevice | None) -> bool:
    raw = ref.attrs.get("use_uuid") or (device.attrs.get("use_uuid") if device else None)
    return bool(raw and parse_bool(raw))


def _ref_issues(node: ClusterNode, ref: DeviceRef, file: str) -> list[Issue]:
    """Problems of one ``<device>`` entry's VM attributes (conflicting or old-style port=)."""
    out: list[Issue] = []
    port, domain = ref.attrs.get("port", ""), ref.attrs.get("domain", "")
    if port and domain and not port.isdigit() and port != domain:
        out.append(
            Issue(
                Code.CONFLICTING_DOMAIN,
                f'node {node.name!r}: port="{port}" and domain="{domain}" name different VMs',
                file,
                ref.line,
            )
        )
    if port.isdigit() and not domain:
        out.append(
            Issue(
                Code.OLD_PORT,
                f'node {node.name!r}: port="{port}" is read as '
                "the old-generation IP port; the VM is taken to be the node "
                "name (use port=VM or domain=VM)",
                file,
                ref.line,
            )
        )
    return out


def _uuid_shaped(target: NodeTarget, file: str) -> list[Issue]:
    """A VM in UUID form without use_uuid: the daemon matches it against domain names and
    UUIDs alike, and refuses it when they name different domains."""
    if target.use_uuid or _UUID_FORM.match(target.domain) is None:
        return []
    return [
        Issue(
            Code.UUID_SHAPED_VM,
            f"node {target.node!r}: VM {target.domain!r} has the form of a UUID but use_uuid "
            "is not set; it will be matched against domain names and UUIDs, and refused if "
            'they name different domains (set use_uuid="1" if it is a UUID, or rename the VM)',
            file,
            target.line,
        )
    ]


_Uses = dict[str, list[tuple[ClusterNode, list[DeviceRef]]]]


def _uses(cluster: Cluster) -> _Uses:
    """Device name -> each node fencing through it, with its ``<device>`` entries in method
    order: built once, so planning is linear in the nodes, not nodes x devices."""
    uses: _Uses = {}
    for node in cluster.nodes:
        mine: dict[str, list[DeviceRef]] = {}
        for ref in (r for m in node.methods for r in m.devices):
            mine.setdefault(ref.name, []).append(ref)
        for name, refs in mine.items():
            uses.setdefault(name, []).append((node, refs))
    return uses


def _targets(
    cluster: Cluster, device: FenceDevice, uses: _Uses, out: list[Issue]
) -> tuple[NodeTarget, ...]:
    """Every node fenced through ``device``, with its VM; VM problems go to ``out``."""
    f = cluster.file
    targets: list[NodeTarget] = []
    by_vm: dict[str, NodeTarget] = {}
    for node, refs in uses.get(device.name, []):
        for ref in refs:
            out.extend(_ref_issues(node, ref, ref.file or f))
        vm = vm_for(node, refs[0])
        if len(vm.encode()) > MAX_DOMAIN_BYTES and vm == node.name:
            out.append(
                Issue(
                    Code.DOMAIN_TOO_LONG,
                    f"node name {node.name!r} is used as the VM "
                    f"but is longer than {MAX_DOMAIN_BYTES} bytes",
                    node.file or f,
                    node.line,
                )
            )
        target = NodeTarget(
            node.name, node.nodeid, node.names, vm, _use_uuid(refs[0], device), refs[0].line
        )
        out.extend(_uuid_shaped(target, refs[0].file or f))
        clash = by_vm.get(vm.casefold())
        if clash is not None:
            out.append(
                Issue(
                    Code.DUPLICATE_DOMAIN,
                    f"nodes {clash.node!r} and {node.name!r} "
                    f"are both fenced through VM {vm!r} on device {device.name!r}",
                    refs[0].file or f,
                    target.line,
                )
            )
        by_vm.setdefault(vm.casefold(), target)
        targets.append(target)
    return tuple(targets)


def _key_issues(dev: FenceDevice, key: KeyState, explicit: bool, file: str) -> list[Issue]:
    line = dev.line
    where = f"device {dev.name!r}: key file {key.path}"
    if key.data is None:
        if key.problem is KeyProblem.MISSING:
            return (
                [Issue(Code.KEY_MISSING, f"{where} does not exist", file, line)] if explicit else []
            )
        return [Issue(Code.KEY_UNREADABLE, f"{where}: {key.reason}", file, line)]
    out = []
    if not key.data:
        out.append(Issue(Code.KEY_EMPTY, f"{where} is empty", file, line))
    if key.size > MAX_KEY_LEN:
        out.append(
            Issue(
                Code.KEY_TOO_LONG,
                f"{where} has {key.size} bytes; only the first {MAX_KEY_LEN} are used",
                file,
                line,
            )
        )
    if key.mode & (stat.S_IRWXG | stat.S_IRWXO):
        out.append(
            Issue(
                Code.KEY_PERMISSIONS,
                f"{where} has mode {key.mode & 0o777:04o}; use chmod 600",
                file,
                line,
            )
        )
    return out


def selected_devices(cluster: Cluster, explicit: Sequence[str] | None) -> Sequence[str] | None:
    """Device names chosen for this host: the command line's, else <fence_xvmd device=>."""
    if explicit:
        return explicit
    if cluster.fence_xvmd is not None and cluster.fence_xvmd.devices:
        return cluster.fence_xvmd.devices
    return None


def _requesters(
    cluster: Cluster, addresses: Mapping[str, tuple[str, ...]] | None, out: list[Issue]
) -> dict[str, str] | None:
    """Address -> node for every node; nodes none of whose names resolve get a warning."""
    if addresses is None:
        return None
    found: dict[str, str] = {}
    for node in cluster.nodes:
        mine = [a for n in node.names for a in (addresses or {}).get(n, ())]
        if addresses is not None and not mine:
            out.append(
                Issue(
                    Code.UNRESOLVED_NODE,
                    f"node {node.name!r}: none of its names "
                    "resolves to an address, so its requests will be refused (add an "
                    "<altname> holding its address)",
                    node.file or cluster.file,
                    node.line,
                )
            )
        for addr in mine:
            found.setdefault(addr, node.name)
    return found


def _candidates(
    cluster: Cluster, chosen: Sequence[str] | None, where: int, out: list[Issue]
) -> list[FenceDevice]:
    """The fence_xvm devices this host may serve; bad choices go to ``out``."""
    if chosen is None:
        return [d for d in cluster.devices if d.is_xvm]
    f = cluster.file
    defined: dict[str, FenceDevice] = {}
    for d in cluster.devices:
        defined.setdefault(d.name, d)  # the first definition, as Cluster.device()
    candidates = []
    for name in chosen:
        dev = defined.get(name)
        if dev is None:
            why = f"device {name!r} is selected for this host but not defined in <fencedevices>"
            out.append(Issue(Code.UNKNOWN_DEVICE, why, f, where))
        elif not dev.is_xvm:
            why = (
                f"device {name!r} has agent {dev.agent!r}; xvmd serves only fence_xvm and "
                "fence_virt devices"
            )
            out.append(Issue(Code.UNKNOWN_AGENT, why, dev.file or f, dev.line))
        else:
            candidates.append(dev)
    return candidates


def _shared_keys(served: Sequence[ServedDevice], file: str) -> list[Issue]:
    by_key: dict[bytes, list[ServedDevice]] = defaultdict(list)
    for sd in served:
        by_key[sd.key].append(sd)
    out = []
    for group in by_key.values():
        if len(group) > 1:
            names = ", ".join(repr(g.name) for g in group[:8])
            names += f" and {len(group) - 8} more" if len(group) > 8 else ""
            why = (
                f"devices {names} use identical key bytes: a request for one would be "
                "accepted as the other"
            )
            dev = group[1].device
            out.append(Issue(Code.KEY_SHARED, why, dev.file or file, dev.line))
    return out


def validate(
    cluster: Cluster,
    keys: Mapping[str, KeyState],
    explicit: Sequence[str] | None = None,
    addresses: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[HostPlan, list[Issue]]:
    """Check ``cluster`` and plan what this host serves.

    Args:
        keys: KeyState per key path of every fence_xvm device.
        explicit: device names from ``-D`` (None: ``<fence_xvmd device=>``, else automatic).
        addresses: the addresses each node name and altname resolves to (None: not resolved,
            no requester map and no ``unresolved-node`` warnings).
    """
    f = cluster.file
    issues = structure(cluster)
    requesters = _requesters(cluster, addresses, issues)
    chosen = selected_devices(cluster, explicit)
    # -D names come from the command line (no line); <fence_xvmd device=> from its element.
    where = 0 if explicit or cluster.fence_xvmd is None else cluster.fence_xvmd.line
    uses = _uses(cluster)
    served: list[ServedDevice] = []
    not_served: list[NotServed] = []
    seen: set[str] = set()
    for dev in _candidates(cluster, chosen, where, issues):
        if dev.name in seen:
            continue
        seen.add(dev.name)
        path = cluster.key_path(dev)
        key = keys.get(path) or KeyState(path, None, KeyProblem.MISSING)
        issues.extend(_key_issues(dev, key, chosen is not None, dev.file or f))
        if not key.data:
            not_served.append(NotServed(dev.name, f"key file {key.path}: {key.reason}"))
            continue
        targets = _targets(cluster, dev, uses, issues)
        served.append(ServedDevice(dev, key.data[:MAX_KEY_LEN], targets))
    if not served:
        why = "this host serves no fence device: no fence_xvm device has a readable key file here"
        issues.append(Issue(Code.NO_DEVICE, why, f, 0))
    issues.extend(_shared_keys(served, f))
    issues.sort(key=lambda i: (i.file, i.line))
    return HostPlan(tuple(served), tuple(not_served), requesters), issues
