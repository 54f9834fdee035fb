"""The parsed cluster.conf as frozen values: what the daemon reads, never mutates.

Only the parts xvmd uses are modelled; other elements (<rm>, <totem>, ...) are accepted and
ignored. Every object keeps the line it came from, for messages.
"""

from __future__ import annotations

import os.path
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

XVM_AGENTS = frozenset({"fence_xvm", "fence_virt"})
DEFAULT_KEY_FILE = "/etc/cluster/fence_xvm.key"


def frozen_attrs(attrs: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(attrs))


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A ``<device>`` inside a node's fence method: which fence device, with per-node options."""

    name: str
    attrs: Mapping[str, str]
    line: int
    file: str = ""  # where it came from, when not the cluster's own file (``Cluster.file``)


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    devices: tuple[DeviceRef, ...]
    line: int


@dataclass(frozen=True, slots=True)
class AltName:
    name: str
    line: int
    file: str = ""


@dataclass(frozen=True, slots=True)
class ClusterNode:
    name: str
    nodeid: int
    votes: int
    altnames: tuple[AltName, ...]
    methods: tuple[Method, ...]
    unfence: tuple[DeviceRef, ...]
    line: int
    file: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """The node's name and its altnames: every name a request may use for it."""
        return (self.name, *(a.name for a in self.altnames))


@dataclass(frozen=True, slots=True)
class FenceDevice:
    name: str
    agent: str
    attrs: Mapping[str, str]
    line: int
    file: str = ""

    @property
    def is_xvm(self) -> bool:
        return self.agent in XVM_AGENTS

    @property
    def key_file(self) -> str:
        return self.attrs.get("key_file") or DEFAULT_KEY_FILE


@dataclass(frozen=True, slots=True)
class Cman:
    expected_votes: int | None = None
    two_node: bool = False
    line: int = 0


@dataclass(frozen=True, slots=True)
class FenceXvmd:
    """The ``<fence_xvmd>`` element: daemon settings for the host side."""

    attrs: Mapping[str, str] = field(default_factory=lambda: frozen_attrs({}))
    devices: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    config_version: int
    cman: Cman
    nodes: tuple[ClusterNode, ...]
    devices: tuple[FenceDevice, ...]
    fence_xvmd: FenceXvmd | None
    file: str
    line: int = 1
    # A Pacemaker guest cluster: the other files it was read from (its corosync.conf), which
    # the daemon watches too; its nodes say which file they came from.
    sources: tuple[str, ...] = ()
    kind: str = "cluster.conf"

    def key_path(self, device: FenceDevice) -> str:
        """The device's key file; a relative path is relative to this file's directory."""
        path = device.key_file
        if os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.file)), path))

    def device(self, name: str) -> FenceDevice | None:
        for dev in self.devices:
            if dev.name == name:
                return dev
        return None
