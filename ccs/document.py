"""The served plan as plain data: one shape for ``xvmd check-config --json`` and for the
``config`` part of ``xvmd status``, so the two never disagree about a deployment."""

from __future__ import annotations

from typing import Any

from ccs.model import Cluster
from ccs.validate import HostPlan


def source(cl: Cluster) -> str:
    """Which kind of configuration it is and where it came from, for the first line an
    operator reads (check-config, the start-up log, ``xvmd status``)."""
    if cl.kind == "pacemaker":
        nodes = cl.sources[0] if cl.sources else "corosync.conf"
        return (
            f"Pacemaker cluster {cl.name!r}: CIB export {cl.file} (epoch {cl.config_version}), "
            f"nodes from {nodes}"
        )
    return f"cluster.conf {cl.file}: cluster {cl.name!r}, config_version {cl.config_version}"


def served(cl: Cluster, plan: HostPlan) -> list[dict[str, Any]]:
    """The devices this host serves, with their keys and node -> VM maps."""
    return [
        {
            "device": sd.name,
            "agent": sd.device.agent,
            "key_file": cl.key_path(sd.device),
            "key_bytes": len(sd.key),
            "nodes": [
                {
                    "node": t.node,
                    "nodeid": t.nodeid,
                    "names": list(t.names),
                    "domain": t.domain,
                    "use_uuid": t.use_uuid,
                }
                for t in sd.nodes
            ],
        }
        for sd in plan.devices
    ]


def not_served(plan: HostPlan) -> list[dict[str, str]]:
    """Devices of the cluster that this host leaves to others, and why."""
    return [{"device": n.device, "reason": n.reason} for n in plan.not_served]
