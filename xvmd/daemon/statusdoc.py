"""What the daemon says about its configuration: the ``config`` part of the status document
(``xvmd status``) and the plan it logs at start-up, both from one snapshot."""

from __future__ import annotations

import logging
from typing import Any

from ccs import document
from ccs.load import Snapshot

log = logging.getLogger("xvmd")


def config(snap: Snapshot, reloads: int) -> dict[str, Any]:
    """cluster.conf as served: devices, their keys and node -> VM maps, what is not served."""
    cl = snap.cluster
    return {
        "file": cl.file,
        "cluster": cl.name,
        "config_version": cl.config_version,
        "source": cl.kind,
        "files": [cl.file, *cl.sources],
        "described": document.source(cl),
        "reloads": reloads,
        "devices": document.served(cl, snap.plan),
        "not_served": document.not_served(snap.plan),
    }


def log_plan(snap: Snapshot) -> None:
    cl = snap.cluster
    log.info("%s", document.source(cl))
    for sd in snap.plan.devices:
        nodes = ", ".join(f"{t.node}->{t.domain}" for t in sd.nodes) or "no nodes"
        log.info("serving device %s (key %s): %s", sd.name, cl.key_path(sd.device), nodes)
    for ns in snap.plan.not_served:
        log.info("not serving device %s: %s", ns.device, ns.reason)
    for issue in snap.issues:
        log.warning("%s", issue.render())
