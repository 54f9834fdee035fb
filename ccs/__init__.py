"""ccs: the cluster.conf (CCS) configuration layer of xvmd.

Parsing, validation and live reload of /etc/cluster/cluster.conf arrive with the ccs issue; the
package exists now so that the daemon's layering (``ccs`` never imports ``xvmd``) is fixed early.
"""

DEFAULT_CLUSTER_CONF = "/etc/cluster/cluster.conf"

__all__ = ["DEFAULT_CLUSTER_CONF"]
