"""ccs: the cluster.conf (CCS) configuration layer of xvmd.

Parse (pure) -> validate (pure, with key states read by ``source``) -> an immutable
``Snapshot``; ``watch`` follows edits. This package never imports ``xvmd``.
"""

from .issues import Code, Issue, Severity, has_errors
from .load import LoadResult, Snapshot, load, load_bytes
from .model import Cluster, ClusterNode, FenceDevice
from .validate import HostPlan, NodeTarget, ServedDevice

DEFAULT_CLUSTER_CONF = "/etc/cluster/cluster.conf"

__all__ = [
    "DEFAULT_CLUSTER_CONF",
    "Cluster",
    "ClusterNode",
    "Code",
    "FenceDevice",
    "HostPlan",
    "Issue",
    "LoadResult",
    "NodeTarget",
    "ServedDevice",
    "Severity",
    "Snapshot",
    "has_errors",
    "load",
    "load_bytes",
]
