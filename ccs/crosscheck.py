"""Cross-references within a parsed cluster: duplicate names and ids, undefined and unused
devices, the two-node settings. Pure, and linear in the size of the cluster (dicts and sets,
no pairwise comparisons)."""

from __future__ import annotations

from .issues import Code, Issue
from .model import Cluster, ClusterNode, FenceDevice


def _node_issues(cluster: Cluster) -> list[Issue]:
    out: list[Issue] = []
    f = cluster.file
    seen_names: dict[str, ClusterNode] = {}
    seen_ids: dict[int, ClusterNode] = {}
    for node in cluster.nodes:
        for name, line in [(node.name, node.line)] + [(a.name, a.line) for a in node.altnames]:
            other = seen_names.setdefault(name.casefold(), node)
            if other is not node:
                why = (
                    f"name {name!r} is used by nodes {other.name!r} (line {other.line}) and "
                    f"{node.name!r}"
                )
                out.append(Issue(Code.DUPLICATE_NODE_NAME, why, node.file or f, line))
        prev = seen_ids.setdefault(node.nodeid, node)
        if prev is not node:
            why = (
                f"nodeid {node.nodeid} is used by {prev.name!r} (line {prev.line}) and "
                f"{node.name!r}"
            )
            out.append(Issue(Code.DUPLICATE_NODEID, why, node.file or f, node.line))
        if not any(m.devices for m in node.methods):
            why = f"node {node.name!r} has no fence method with a device"
            out.append(Issue(Code.NODE_NOT_FENCED, why, node.file or f, node.line))
    return out


def _device_issues(cluster: Cluster) -> list[Issue]:
    out: list[Issue] = []
    f = cluster.file
    defined: dict[str, FenceDevice] = {}
    for dev in cluster.devices:
        first = defined.setdefault(dev.name, dev)
        if first is not dev:
            why = f"fence device {dev.name!r} is defined twice (first on line {first.line})"
            out.append(Issue(Code.DUPLICATE_DEVICE_NAME, why, dev.file or f, dev.line))
    used: set[str] = set()
    for node in cluster.nodes:
        for method in node.methods:
            for ref in method.devices:
                used.add(ref.name)
                if ref.name not in defined:
                    why = (
                        f"node {node.name!r} method {method.name!r} uses device {ref.name!r}, "
                        "which <fencedevices> does not define"
                    )
                    out.append(Issue(Code.UNDEFINED_DEVICE, why, ref.file or f, ref.line))
        for ref in node.unfence:
            if ref.name not in defined:
                why = f"node {node.name!r} unfence uses device {ref.name!r}, which is not defined"
                out.append(Issue(Code.UNDEFINED_DEVICE, why, f, ref.line))
    for dev in cluster.devices:
        if dev.is_xvm and dev.name not in used:
            why = f"fence device {dev.name!r} is used by no node"
            out.append(Issue(Code.UNUSED_DEVICE, why, dev.file or f, dev.line))
    return out


def _two_node_issues(cluster: Cluster) -> list[Issue]:
    cman, f = cluster.cman, cluster.file
    if not cman.two_node:
        return []
    out: list[Issue] = []
    if cman.expected_votes is not None and cman.expected_votes != 1:
        why = f'two_node="1" needs expected_votes="1", not "{cman.expected_votes}"'
        out.append(Issue(Code.TWO_NODE_VOTES, why, f, cman.line))
    if len(cluster.nodes) != 2:
        why = f'two_node="1" but the cluster has {len(cluster.nodes)} nodes'
        out.append(Issue(Code.TWO_NODE_COUNT, why, f, cman.line))
    return out


def structure(cluster: Cluster) -> list[Issue]:
    """Every cross-reference problem of ``cluster`` (unsorted)."""
    return [*_node_issues(cluster), *_device_issues(cluster), *_two_node_issues(cluster)]
