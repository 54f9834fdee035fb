"""xvmd: a fence_xvm-compatible, cluster-aware host fencing daemon for libvirt guests."""

__version__ = "0.1.0"
