"""The bounds on what ccs reads: a cluster.conf beyond them is refused, never half-used.

They keep a load (start-up, ``check-config``, every live reload) short and small in memory
whatever the file holds; docs/configuration.md ("Limits") states them with measured costs.
"""

from __future__ import annotations

# A 1024-node file is about 150 KiB; the margin is for comments and other elements.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# cman and corosync clusters have at most a few dozen nodes; guest clusters far fewer.
MAX_NODES = 1024
# Numbers (nodeid, votes, config_version, ...) are C ints in cman and corosync.
MAX_NUMBER = 2**31 - 1
# The stock client reads at most this many bytes of a key file and ignores the rest.
MAX_KEY_LEN = 4096
