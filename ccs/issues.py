"""Problems found in a cluster.conf: one stable code per kind, a fixed severity per code.

Rules:
1. Codes never change meaning once released: operators and tests match on them.
2. Every problem carries the file and line it is about (line 0: the file as a whole).
3. Parsers and validators return lists of Issues; nothing here raises for bad input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Code(enum.StrEnum):
    # Structure
    CONFIG_UNREADABLE = "config-unreadable"
    CONFIG_TOO_LARGE = "config-too-large"
    XML_SYNTAX = "xml-syntax"
    NOT_CLUSTER = "not-cluster"
    MISSING_ELEMENT = "missing-element"
    MISSING_ATTRIBUTE = "missing-attribute"
    TOO_MANY_NODES = "too-many-nodes"
    CONF_SYNTAX = "conf-syntax"  # corosync.conf of a Pacemaker guest cluster
    # Values
    BAD_NUMBER = "bad-number"
    BAD_PORT = "bad-port"
    BAD_HASH = "bad-hash"
    BAD_ADDRESS = "bad-address"
    BAD_FAMILY = "bad-family"
    BAD_BOOLEAN = "bad-boolean"
    DOMAIN_TOO_LONG = "domain-too-long"
    # Cross references
    DUPLICATE_NODE_NAME = "duplicate-node-name"
    DUPLICATE_NODEID = "duplicate-nodeid"
    DUPLICATE_DEVICE_NAME = "duplicate-device-name"
    UNDEFINED_DEVICE = "undefined-device"
    UNKNOWN_DEVICE = "unknown-device"
    UNKNOWN_AGENT = "unknown-agent"
    DUPLICATE_DOMAIN = "duplicate-domain"
    CONFLICTING_DOMAIN = "conflicting-domain"
    # Quorum settings
    TWO_NODE_VOTES = "two-node-votes"
    TWO_NODE_COUNT = "two-node-count"
    # Keys
    KEY_MISSING = "key-missing"
    KEY_UNREADABLE = "key-unreadable"
    KEY_EMPTY = "key-empty"
    KEY_TOO_LONG = "key-too-long"
    KEY_PERMISSIONS = "key-permissions"
    KEY_SHARED = "key-shared"
    NO_DEVICE = "no-device"
    # Advice
    OLD_PORT = "old-port"
    NODE_NOT_FENCED = "node-not-fenced"
    UNUSED_DEVICE = "unused-device"
    CLUSTER_NAME_LONG = "cluster-name-long"
    UNRESOLVED_NODE = "unresolved-node"
    UUID_SHAPED_VM = "uuid-shaped-vm"
    # Pacemaker guest clusters (corosync.conf and a CIB export)
    BAD_HOST_MAP = "bad-host-map"
    CLUSTER_MISMATCH = "cluster-mismatch"
    UNKNOWN_NODE = "unknown-node"


SEVERITY: dict[Code, Severity] = {code: Severity.ERROR for code in Code}
SEVERITY.update(
    {
        Code.TWO_NODE_COUNT: Severity.WARNING,
        Code.KEY_TOO_LONG: Severity.WARNING,
        Code.KEY_PERMISSIONS: Severity.WARNING,
        Code.OLD_PORT: Severity.WARNING,
        Code.NODE_NOT_FENCED: Severity.WARNING,
        Code.UNUSED_DEVICE: Severity.WARNING,
        Code.CLUSTER_NAME_LONG: Severity.WARNING,
        Code.UNRESOLVED_NODE: Severity.WARNING,
        Code.UUID_SHAPED_VM: Severity.WARNING,
        Code.UNKNOWN_NODE: Severity.WARNING,
    }
)

DESCRIPTION: dict[Code, str] = {
    Code.CONFIG_UNREADABLE: "cluster.conf itself cannot be read (or is not a regular file)",
    Code.CONFIG_TOO_LARGE: "cluster.conf is larger than 4 MiB; it is not read",
    Code.XML_SYNTAX: "the file is not well-formed XML",
    Code.NOT_CLUSTER: "the root element is neither <cluster> nor <cib> (a Pacemaker CIB export)",
    Code.CONF_SYNTAX: "a line of the guest cluster's corosync.conf that corosync cannot read",
    Code.BAD_HOST_MAP: "a pcmk_host_map entry is not node:port",
    Code.CLUSTER_MISMATCH: "the CIB export and corosync.conf name different clusters",
    Code.UNKNOWN_NODE: "a fence device's map names a node that corosync.conf does not have",
    Code.MISSING_ELEMENT: "a required element is missing",
    Code.MISSING_ATTRIBUTE: "a required attribute is missing or empty",
    Code.TOO_MANY_NODES: "more than 1024 cluster nodes; the nodes are not read",
    Code.BAD_NUMBER: "a value that must be a whole number is not one, or is out of range "
    "(at most 2147483647)",
    Code.BAD_PORT: "a port is not a number in 1..65535",
    Code.BAD_HASH: "a hash or auth name is not none, sha1, sha256 or sha512",
    Code.BAD_ADDRESS: "an address is not a valid IP (or multicast group)",
    Code.BAD_FAMILY: "ip_family is not auto, ipv4 or ipv6",
    Code.BAD_BOOLEAN: "a flag is not 0/1, yes/no, true/false or on/off",
    Code.DOMAIN_TOO_LONG: "a VM name is longer than the 63 bytes a request can carry",
    Code.DUPLICATE_NODE_NAME: "two cluster nodes (or altnames) share a name",
    Code.DUPLICATE_NODEID: "two cluster nodes share a nodeid",
    Code.DUPLICATE_DEVICE_NAME: "two fence devices share a name",
    Code.UNDEFINED_DEVICE: "a fence method uses a device that <fencedevices> does not define",
    Code.UNKNOWN_DEVICE: "a device selected for this host is not defined",
    Code.UNKNOWN_AGENT: "a device selected for this host is not a fence_xvm/fence_virt device",
    Code.DUPLICATE_DOMAIN: "two nodes are fenced through the same VM on one device",
    Code.CONFLICTING_DOMAIN: "a <device> names two different VMs (port and domain)",
    Code.TWO_NODE_VOTES: 'two_node="1" needs expected_votes="1"',
    Code.TWO_NODE_COUNT: 'two_node="1" with a node count other than two',
    Code.KEY_MISSING: "a key file of a device this host serves does not exist",
    Code.KEY_UNREADABLE: "a key file of a device this host serves cannot be read",
    Code.KEY_EMPTY: "a key file is empty: every signed request would be rejected",
    Code.KEY_TOO_LONG: "a key file is longer than 4096 bytes; clients ignore the rest",
    Code.KEY_PERMISSIONS: "a key file is readable or writable by group or others",
    Code.KEY_SHARED: "two devices use identical key bytes: both hosts would act on a request",
    Code.NO_DEVICE: "no fence_xvm device with a readable key: this host would serve nothing",
    Code.OLD_PORT: "a numeric port= is the old-generation IP port, not a VM",
    Code.NODE_NOT_FENCED: "a cluster node has no fence method",
    Code.UNUSED_DEVICE: "a fence_xvm device is used by no cluster node",
    Code.CLUSTER_NAME_LONG: "the cluster name is longer than 16 characters (cman's limit)",
    Code.UNRESOLVED_NODE: "no name of a node resolves to an address: its requests are refused",
    Code.UUID_SHAPED_VM: "a VM has the form of a UUID but use_uuid is not set: name or UUID?",
}


@dataclass(frozen=True, slots=True)
class Issue:
    code: Code
    message: str
    file: str
    line: int = 0

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.code]

    def render(self) -> str:
        """``PATH:LINE: error|warning CODE: message`` (the compiler-style form editors link)."""
        return f"{self.file}:{self.line}: {self.severity} {self.code}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "severity": str(self.severity),
            "code": str(self.code),
            "message": self.message,
        }


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity is Severity.ERROR for i in issues)
