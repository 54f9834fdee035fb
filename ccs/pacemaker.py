"""A Pacemaker guest cluster (its corosync.conf and a CIB export) as a ``Cluster`` (pure).

The rest of xvmd knows one model, the cman-era ``Cluster``; a Pacemaker cluster is translated
into it, so the requester check, the node -> VM scope, per-device keys, ``check-config`` and
live reload work the same for both:

- nodes: corosync.conf's nodelist (name, nodeid; every ring address becomes an altname, a name
  the node's requests may come from);
- fence devices: the CIB's fence_xvm/fence_virt stonith resources, their instance attributes
  as the device's attributes (``key_file``, ``multicast_address``, ``ipport``, ...);
- each node's fencing: one method with an entry per device that fences it, naming the VM
  (``pcmk_host_map``, ``pcmk_host_list`` with ``port``, or the node's own name);
- the version: the CIB's epoch (``admin_epoch``, ``epoch``), which every change to the CIB
  raises; an edit of corosync.conf alone is taken with the next CIB export.

Issues point at the file and line they are about: a node at corosync.conf, a device or a map
entry at the CIB.
"""

from __future__ import annotations

from lxml import etree

from .cib import CibDevices, parse_cib
from .corosync_conf import CoroNode, CorosyncConf, parse_corosync
from .issues import Code, Issue
from .model import AltName, Cluster, ClusterNode, Cman, DeviceRef, Method, frozen_attrs

METHOD = "pacemaker"


def _refs(node: CoroNode, cib: CibDevices) -> tuple[DeviceRef, ...]:
    refs = []
    for dev in cib.devices:
        targets = cib.targets.get(dev.name)
        if targets is None:  # any node, as the VM with its name
            refs.append(DeviceRef(dev.name, frozen_attrs({"port": node.name}), dev.line, cib.file))
            continue
        for t in targets:
            if t.node == node.name:
                refs.append(DeviceRef(dev.name, frozen_attrs({"port": t.vm}), t.line, cib.file))
    return tuple(refs)


def _node(node: CoroNode, cib: CibDevices, file: str) -> ClusterNode:
    alts = tuple(AltName(a, node.line, file) for a in node.addresses if a != node.name)
    refs = _refs(node, cib)
    methods = (Method(METHOD, refs, node.line),) if refs else ()
    return ClusterNode(node.name, node.nodeid, 1, alts, methods, (), node.line, file)


def _strangers(coro: CorosyncConf, cib: CibDevices) -> list[Issue]:
    """Map entries naming nodes corosync.conf does not have: requests for them are refused."""
    known = {n.name for n in coro.nodes}
    out = []
    for dev, targets in cib.targets.items():
        for t in targets or ():
            if t.node not in known:
                why = (
                    f"device {dev!r} fences node {t.node!r}, which is not in the nodelist of "
                    f"{coro.file}: requests for it are refused"
                )
                out.append(Issue(Code.UNKNOWN_NODE, why, cib.file, t.line))
    return out


def translate(coro: CorosyncConf, cib: CibDevices) -> tuple[Cluster, list[Issue]]:
    issues = _strangers(coro, cib)
    if cib.cluster_name and cib.cluster_name != coro.cluster_name:
        why = (
            f"the CIB is of cluster {cib.cluster_name!r}, {coro.file} of "
            f"{coro.cluster_name!r}: are they from the same cluster?"
        )
        issues.append(Issue(Code.CLUSTER_MISMATCH, why, cib.file, cib.name_line))
    cluster = Cluster(
        name=coro.cluster_name,
        config_version=cib.version,
        cman=Cman(),
        nodes=tuple(_node(n, cib, coro.file) for n in coro.nodes),
        devices=cib.devices,
        fence_xvmd=None,
        file=cib.file,
        sources=(coro.file,),
        kind="pacemaker",
    )
    return cluster, issues


def parse_pacemaker(
    root: etree._Element, cib_data: bytes, cib_file: str, coro_data: bytes, coro_file: str
) -> tuple[Cluster | None, list[Issue]]:
    """The guest cluster of the CIB whose root is ``root`` and of its corosync.conf."""
    cib, issues = parse_cib(root, cib_data, cib_file)
    coro, more = parse_corosync(coro_data, coro_file)
    issues += more
    if coro is None:
        return None, issues
    cluster, more = translate(coro, cib)
    return cluster, [*issues, *more]


__all__ = ["METHOD", "parse_pacemaker", "translate"]
