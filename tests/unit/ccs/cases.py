"""The fixture for every issue code, and helpers to copy and read fixtures.

``CASES`` maps each ``ccs.Code`` to the file that provokes it (``fixtures/ccs/invalid-CODE.conf``
for errors, ``warn-CODE.conf`` for warnings) and what the test expects of the issue: the line it
points at (found by a snippet of that line, so editing a fixture's header does not break the
test) and a fragment of its message.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ccs import Code
from ccs.limits import MAX_CONFIG_BYTES, MAX_NODES

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures"
CCS_DIR = FIXTURES / "ccs"
KEYS_DIR = FIXTURES / "keys"

VALID_FIXTURES = (
    "two-host.conf",
    "two-node.conf",
    "sixteen-nodes.conf",
    "qdisk.conf",
    "old-generation.conf",
    "fence-xvmd-settings.conf",
    "altnames.conf",
    "uuid.conf",
)


def stage_tree(root: Path, key_modes: Mapping[str, int] | None = None) -> None:
    """Copy fixtures/ccs and fixtures/keys under ``root``; keys get mode 0600 unless
    ``key_modes`` says otherwise."""
    shutil.copytree(CCS_DIR, root / "ccs")
    shutil.copytree(KEYS_DIR, root / "keys")
    for key in (root / "keys").glob("*.key"):
        key.chmod(0o600)
    for name, mode in (key_modes or {}).items():
        (root / "keys" / name).chmod(mode)


def line_of(path: Path, snippet: str) -> int:
    """1-based number of the last line of ``path`` that contains ``snippet``."""
    found = [n for n, text in enumerate(path.read_text().splitlines(), 1) if snippet in text]
    assert found, f"{snippet!r} is not in {path}"
    return found[-1]


@dataclass(frozen=True)
class Case:
    code: Code
    fixture: str | None  # under fixtures/ccs; None: load a path that does not exist
    at: str | None  # snippet of the (last) line the issue points at; None: line 0 (whole file)
    says: str  # a fragment of the message
    explicit: tuple[str, ...] | None = None  # devices passed as ``-D``
    key_modes: Mapping[str, int] = field(default_factory=dict)  # stage privately, these modes
    also: frozenset[Code] = frozenset()  # other codes the file unavoidably yields
    # Writes the file into the directory given (fixture None): for files too big for git.
    make: Callable[[Path], Path] | None = None
    # The fixture is a guest cluster's corosync.conf, loaded with this CIB export (under
    # fixtures/ccs) as ``--corosync-conf``.
    cib: str | None = None

    @property
    def id(self) -> str:
        return str(self.code)


def nodes_conf(count: int, key: Path | str = "/nonexistent/key") -> str:
    """A cluster.conf of ``count`` nodes, one line each, on one fence_xvm device; node N is
    named nodeNNNN and fenced through VM vm-NNNN."""
    out = ['<?xml version="1.0"?>', '<cluster name="big" config_version="1">', "<clusternodes>"]
    for n in range(1, count + 1):
        out.append(
            f'<clusternode name="node{n:04d}" nodeid="{n}"><fence><method name="1">'
            f'<device name="xvm" port="vm-{n:04d}"/></method></fence></clusternode>'
        )
    out.append("</clusternodes><fencedevices>")
    out.append(f'<fencedevice name="xvm" agent="fence_xvm" key_file="{key}"/>')
    out.append("</fencedevices></cluster>")
    return "\n".join(out) + "\n"


def make_too_large(directory: Path) -> Path:
    """A sparse file one byte over the limit: nothing of it may be read."""
    path = directory / "cluster.conf"
    with path.open("wb") as fh:
        fh.truncate(MAX_CONFIG_BYTES + 1)
    return path


def make_too_many_nodes(directory: Path) -> Path:
    path = directory / "cluster.conf"
    path.write_text(nodes_conf(MAX_NODES + 1))
    return path


CASES: tuple[Case, ...] = (
    # Structure
    Case(Code.CONFIG_UNREADABLE, None, None, "no such file"),
    Case(
        Code.CONFIG_TOO_LARGE,
        None,
        None,
        f"is {MAX_CONFIG_BYTES + 1} bytes, more than the {MAX_CONFIG_BYTES} allowed",
        make=make_too_large,
    ),
    Case(Code.XML_SYNTAX, "invalid-xml-syntax.conf", "</clusternod>", "tag mismatch"),
    Case(
        Code.NOT_CLUSTER, "invalid-not-cluster.conf", "<resources>", "root element is <resources>"
    ),
    Case(
        Code.CONF_SYNTAX,
        "invalid-conf-syntax.conf",
        "to_logfile no",
        "'to_logfile no' is neither",
        cib="pacemaker-cib.xml",
    ),
    Case(Code.MISSING_ELEMENT, "invalid-missing-element.conf", "<cluster ", "<clusternodes>"),
    Case(Code.MISSING_ATTRIBUTE, "invalid-missing-attribute.conf", "<method>", "name="),
    Case(
        Code.TOO_MANY_NODES,
        None,
        f'name="node{MAX_NODES + 1:04d}"',
        f"more than {MAX_NODES} <clusternode> elements",
        make=make_too_many_nodes,
    ),
    # Values
    Case(Code.BAD_NUMBER, "invalid-bad-number.conf", 'votes="one"', 'votes="one"'),
    Case(Code.BAD_PORT, "invalid-bad-port.conf", 'ipport="70000"', 'ipport="70000"'),
    Case(Code.BAD_HASH, "invalid-bad-hash.conf", 'hash="md5"', 'hash="md5"'),
    Case(Code.BAD_ADDRESS, "invalid-bad-address.conf", "multicast_address=", "192.168.122.1"),
    Case(Code.BAD_FAMILY, "invalid-bad-family.conf", 'ip_family="inet6"', "inet6"),
    Case(Code.BAD_BOOLEAN, "invalid-bad-boolean.conf", 'use_uuid="enabled"', "enabled"),
    Case(Code.DOMAIN_TOO_LONG, "invalid-domain-too-long.conf", 'port="vm-n2-n2', "64 bytes"),
    # Cross references
    Case(
        Code.DUPLICATE_NODE_NAME,
        "invalid-duplicate-node-name.conf",
        '<clusternode name="n1" nodeid="2">',
        "name 'n1'",
    ),
    Case(
        Code.DUPLICATE_NODEID,
        "invalid-duplicate-nodeid.conf",
        '<clusternode name="n2" nodeid="1">',
        "nodeid 1",
    ),
    Case(
        Code.DUPLICATE_DEVICE_NAME,
        "invalid-duplicate-device-name.conf",
        "../keys/host2.key",
        "'xvm-host1' is defined twice",
    ),
    Case(Code.UNDEFINED_DEVICE, "invalid-undefined-device.conf", '"xvm-host2"', "'xvm-host2'"),
    Case(Code.UNKNOWN_DEVICE, "invalid-unknown-device.conf", "<fence_xvmd", "'xvm-host9'"),
    Case(Code.UNKNOWN_AGENT, "invalid-unknown-agent.conf", 'name="ipmi-n1"', "fence_ipmilan"),
    Case(
        Code.DUPLICATE_DOMAIN,
        "invalid-duplicate-domain.conf",
        'port="vm-n1"',  # the last one: the second node to claim the VM
        "VM 'vm-n1'",
    ),
    Case(
        Code.CONFLICTING_DOMAIN,
        "invalid-conflicting-domain.conf",
        'domain="vm-other"',
        'port="vm-n2" and domain="vm-other"',
    ),
    # Quorum settings
    Case(Code.TWO_NODE_VOTES, "invalid-two-node-votes.conf", "<cman ", 'not "2"'),
    Case(Code.TWO_NODE_COUNT, "warn-two-node-count.conf", "<cman ", "3 nodes"),
    # Keys
    Case(Code.KEY_MISSING, "invalid-key-missing.conf", "missing.key", "does not exist"),
    Case(
        Code.KEY_UNREADABLE,
        "invalid-key-unreadable.conf",
        'key_file="../keys"',
        "not a regular file",
    ),
    Case(Code.KEY_EMPTY, "invalid-key-empty.conf", "empty.key", "is empty"),
    Case(Code.KEY_TOO_LONG, "warn-key-too-long.conf", "long.key", "5000 bytes"),
    Case(
        Code.KEY_PERMISSIONS,
        "warn-key-permissions.conf",
        "host3.key",
        "mode 0644",
        key_modes={"host3.key": 0o644},
    ),
    Case(Code.KEY_SHARED, "invalid-key-shared.conf", "host1-copy.key", "identical key bytes"),
    Case(Code.NO_DEVICE, "invalid-no-device.conf", None, "serves no fence device"),
    # Advice
    Case(Code.OLD_PORT, "warn-old-port.conf", 'port="1229"', "old-generation IP port"),
    Case(Code.NODE_NOT_FENCED, "warn-node-not-fenced.conf", 'name="n3"', "'n3'"),
    Case(Code.UNUSED_DEVICE, "warn-unused-device.conf", 'name="xvm-host2"', "'xvm-host2'"),
    Case(Code.CLUSTER_NAME_LONG, "warn-cluster-name-long.conf", "<cluster ", "23 characters"),
    Case(
        Code.UNRESOLVED_NODE,
        "warn-unresolved-node.conf",
        'name="unresolvable-n2"',
        "'unresolvable-n2'",
    ),
    Case(
        Code.UUID_SHAPED_VM,
        "warn-uuid-shaped-vm.conf",
        'port="00000002-0000-4000-8000-00000000000a"',
        "VM '00000002-0000-4000-8000-00000000000a' has the form of a UUID",
    ),
    # Pacemaker guest clusters: CIB exports, read with fixtures/ccs/corosync.conf
    Case(Code.BAD_HOST_MAP, "invalid-bad-host-map.conf", "pcmk_host_map", "'spare'"),
    Case(
        Code.CLUSTER_MISMATCH,
        "invalid-cluster-mismatch.conf",
        'name="cluster-name"',
        "cluster 'webfarm'",
    ),
    Case(Code.UNKNOWN_NODE, "warn-unknown-node.conf", "pcmk_host_map", "node 'n9'"),
)


def fake_resolver(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Resolves every name to a documentation address except those starting "unresolvable";
    the tests never ask the real resolver (that would send DNS queries off the machine)."""
    out: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(dict.fromkeys(names)):
        out[name] = () if name.startswith("unresolvable") else (f"198.51.100.{i % 250 + 1}",)
    return out


def load_args(case: Case, path: Path, staged: Path) -> tuple[Path, str | None]:
    """The file to give as ``-f`` for ``case`` (its fixture, or the CIB it goes with), and
    the corosync.conf to give with it (None: the default)."""
    if case.cib is None:
        return path, None
    return staged / "ccs" / case.cib, str(path)


def case_path(case: Case, staged: Path, tmp_path: Path) -> Path:
    """The file to load for ``case``: from the shared staged copy, or from a private copy in
    ``tmp_path`` when the case needs particular key modes."""
    if case.make is not None:
        return case.make(tmp_path)
    if case.fixture is None:
        return tmp_path / "no-such-dir" / "cluster.conf"
    if case.key_modes:
        stage_tree(tmp_path, case.key_modes)
        return tmp_path / "ccs" / case.fixture
    return staged / "ccs" / case.fixture


# Fixtures with several defects, covered by their own tests rather than by CASES.
MULTI_DEFECT_FIXTURES = frozenset({"invalid-several.conf"})
