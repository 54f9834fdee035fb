"""ccs.validate: cross-checks and the host plan (devices served, keys, node -> VM), pure."""

from __future__ import annotations

import pytest

from ccs import Cluster, Code, HostPlan, Issue, Severity
from ccs.model import DeviceRef, frozen_attrs
from ccs.parse import parse
from ccs.validate import KeyProblem, KeyState, NodeTarget, selected_devices, validate, vm_for
from tests.unit.ccs.cases import CCS_DIR

CONF = "/etc/cluster/cluster.conf"


def _cluster(xml: str, file: str = CONF) -> Cluster:
    cluster, issues = parse(xml.encode(), file)
    assert issues == [], [i.render() for i in issues]
    assert cluster is not None
    return cluster


def _fixture(name: str) -> Cluster:
    path = CCS_DIR / name
    cluster, issues = parse(path.read_bytes(), str(path))
    assert issues == [] and cluster is not None
    return cluster


def _key(n: int) -> bytes:
    return bytes([n]) * 4096


def _good(path: str, data: bytes) -> KeyState:
    return KeyState(path, data, None, len(data), 0o600)


def _keys(cluster: Cluster, **by_device: KeyState | bytes | None) -> dict[str, KeyState]:
    """KeyStates per key path; a device given bytes has a good key, None: its key is missing.
    Devices not named get a distinct good key."""
    out: dict[str, KeyState] = {}
    for n, dev in enumerate(cluster.devices, 1):
        path = cluster.key_path(dev)
        given = by_device.get(dev.name.replace("-", "_"), _key(n))
        if isinstance(given, KeyState):
            out[path] = given
        elif given is not None:
            out[path] = _good(path, given)
    return out


def _run(
    cluster: Cluster, keys: dict[str, KeyState], explicit: list[str] | None = None
) -> tuple[HostPlan, list[Issue]]:
    return validate(cluster, keys, explicit)


def _served(plan: HostPlan) -> list[str]:
    return [sd.name for sd in plan.devices]


def _domains(plan: HostPlan) -> dict[str, str]:
    return {t.node: t.domain for sd in plan.devices for t in sd.nodes}


def _nodes_xml(*nodes: str, devices: str = "", extra: str = "") -> str:
    """One node per line, so issues on different nodes have different lines."""
    body = "\n".join(nodes)
    return (
        f'<cluster name="c" config_version="1">\n<clusternodes>\n{body}\n</clusternodes>\n'
        f"<fencedevices>\n{devices}\n</fencedevices>\n{extra}\n</cluster>\n"
    )


def _node(name: str, nodeid: int, *refs: str, alt: str = "") -> str:
    devs = "".join(f"<device {r}/>" for r in refs)
    fence = f'<fence><method name="1">{devs}</method></fence>' if refs else ""
    return f'<clusternode name="{name}" nodeid="{nodeid}">{alt}{fence}</clusternode>'


def _xvm(name: str, extra: str = "") -> str:
    return f'<fencedevice name="{name}" agent="fence_xvm" key_file="/keys/{name}.key" {extra}/>'


# --- which devices this host serves ----------------------------------------------------------


def test_default_serves_every_xvm_device_with_a_readable_key() -> None:
    cl = _fixture("sixteen-nodes.conf")
    plan, issues = _run(cl, _keys(cl))
    assert issues == []
    assert _served(plan) == ["xvm-host1", "xvm-host2", "xvm-host3", "xvm-host4"]
    assert plan.not_served == ()
    assert [sd.key for sd in plan.devices] == [_key(n) for n in range(1, 5)]
    assert [[t.node for t in sd.nodes] for sd in plan.devices][2] == [
        "node09",
        "node10",
        "node11",
        "node12",
    ]


def test_default_skips_devices_whose_key_is_not_here_without_complaint() -> None:
    cl = _fixture("sixteen-nodes.conf")
    plan, issues = _run(cl, _keys(cl, xvm_host1=None, xvm_host3=None))
    assert issues == []
    assert _served(plan) == ["xvm-host2", "xvm-host4"]
    assert [(n.device, n.reason) for n in plan.not_served] == [
        ("xvm-host1", f"key file {cl.key_path(cl.devices[0])}: missing"),
        ("xvm-host3", f"key file {cl.key_path(cl.devices[2])}: missing"),
    ]


def test_default_ignores_other_agents() -> None:
    cl = _fixture("qdisk.conf")
    plan, issues = _run(cl, _keys(cl, xvm_host2=None))
    assert issues == []
    assert _served(plan) == ["xvm-host1"]
    assert [n.device for n in plan.not_served] == ["xvm-host2"]  # scsi-fence is not a candidate


def test_explicit_selection() -> None:
    cl = _fixture("sixteen-nodes.conf")
    plan, issues = _run(cl, _keys(cl), ["xvm-host3", "xvm-host1", "xvm-host3"])
    assert issues == []
    assert _served(plan) == ["xvm-host3", "xvm-host1"]  # in the order asked, once each
    assert plan.not_served == ()


def test_empty_explicit_list_means_automatic() -> None:
    cl = _fixture("two-host.conf")
    assert selected_devices(cl, []) is None
    plan, _ = _run(cl, _keys(cl), [])
    assert _served(plan) == ["xvm-host1", "xvm-host2"]


def test_fence_xvmd_device_selects_and_explicit_overrides_it() -> None:
    cl = _fixture("fence-xvmd-settings.conf")
    assert selected_devices(cl, None) == ("xvm-host1",)
    plan, issues = _run(cl, _keys(cl))
    assert issues == []
    assert _served(plan) == ["xvm-host1"]
    assert _domains(plan) == {"web1": "web1-vm"}
    assert plan.not_served == ()  # unselected devices are simply not considered

    assert selected_devices(cl, ["xvm-host2"]) == ["xvm-host2"]
    plan, issues = _run(cl, _keys(cl), ["xvm-host2"])
    assert issues == []
    assert _served(plan) == ["xvm-host2"]
    assert _domains(plan) == {"web2": "web2-vm"}


def test_missing_key_is_an_error_only_for_a_selected_device() -> None:
    cl = _fixture("two-host.conf")
    keys = _keys(cl, xvm_host2=None)
    plan, issues = _run(cl, keys)
    assert issues == [] and _served(plan) == ["xvm-host1"]

    plan, issues = _run(cl, keys, ["xvm-host1", "xvm-host2"])
    assert [(i.code, i.line) for i in issues] == [(Code.KEY_MISSING, cl.devices[1].line)]
    assert _served(plan) == ["xvm-host1"]
    assert [n.device for n in plan.not_served] == ["xvm-host2"]


def test_unknown_device_and_agent_via_explicit() -> None:
    cl = _fixture("qdisk.conf")
    plan, issues = _run(cl, _keys(cl), ["xvm-host1", "nope", "scsi-fence"])
    assert [(i.code, i.line) for i in issues] == [
        (Code.UNKNOWN_DEVICE, 0),  # from the command line: no line to point at
        (Code.UNKNOWN_AGENT, cl.devices[2].line),
    ]
    assert "'nope'" in issues[0].message
    assert "'fence_scsi'" in issues[1].message
    assert _served(plan) == ["xvm-host1"]


def test_only_unknown_devices_selected_leaves_nothing_to_serve() -> None:
    cl = _fixture("two-host.conf")
    plan, issues = _run(cl, _keys(cl), ["nope"])
    assert [i.code for i in issues] == [Code.UNKNOWN_DEVICE, Code.NO_DEVICE]
    assert plan.devices == () and plan.not_served == ()


def test_unknown_device_from_fence_xvmd_points_at_the_element() -> None:
    path = CCS_DIR / "invalid-unknown-device.conf"
    cl, issues = parse(path.read_bytes(), str(path))
    assert cl is not None and cl.fence_xvmd is not None
    _, issues = _run(cl, _keys(cl))
    (issue,) = issues
    assert issue.code is Code.UNKNOWN_DEVICE
    assert issue.line == cl.fence_xvmd.line


@pytest.mark.parametrize(
    ("state", "reason", "code"),
    [
        (KeyState("/k", None, KeyProblem.MISSING), "key file /k: missing", None),
        (KeyState("/k", None, KeyProblem.NOT_REGULAR), "key file /k: not a regular file", "u"),
        (
            KeyState("/k", None, KeyProblem.DENIED),
            "key file /k: unreadable: permission denied",
            "u",
        ),
        (KeyState("/k", b"", None, 0), "key file /k: empty", "e"),
    ],
)
def test_not_served_reasons(state: KeyState, reason: str, code: str | None) -> None:
    cl = _cluster(
        _nodes_xml(
            _node("a", 1, 'name="x1" port="va"'),
            _node("b", 2, 'name="x2" port="vb"'),
            devices='<fencedevice name="x1" agent="fence_xvm" key_file="/k"/>' + _xvm("x2"),
        )
    )
    plan, issues = _run(cl, {"/k": state, "/keys/x2.key": _good("/keys/x2.key", _key(2))})
    assert [(n.device, n.reason) for n in plan.not_served] == [("x1", reason)]
    assert _served(plan) == ["x2"]
    expected = {None: [], "u": [Code.KEY_UNREADABLE], "e": [Code.KEY_EMPTY]}[code]
    assert [i.code for i in issues] == expected
    assert all(i.line == cl.devices[0].line for i in issues)


def test_no_device_when_nothing_can_be_served() -> None:
    cl = _fixture("two-host.conf")
    plan, issues = _run(cl, {})
    assert [(i.code, i.line, i.file) for i in issues] == [(Code.NO_DEVICE, 0, cl.file)]
    assert plan.devices == () and len(plan.not_served) == 2

    only_ipmi = _cluster(
        _nodes_xml(
            _node("a", 1, 'name="ipmi"'),
            devices='<fencedevice name="ipmi" agent="fence_ipmilan" ipaddr="10.0.0.1"/>',
        )
    )
    _, issues = _run(only_ipmi, {})
    assert [i.code for i in issues] == [Code.NO_DEVICE]


def test_key_state_checks() -> None:
    cl = _fixture("two-node.conf")
    path = cl.key_path(cl.devices[0])
    long = b"k" * 5000

    def codes(state: KeyState) -> list[Code]:
        return [i.code for i in _run(cl, {path: state})[1]]

    assert codes(KeyState(path, long[:4097], None, 5000, 0o600)) == [Code.KEY_TOO_LONG]
    assert codes(KeyState(path, _key(1), None, 4096, 0o600)) == []
    assert codes(KeyState(path, _key(1), None, 4096, 0o400)) == []
    assert codes(KeyState(path, _key(1), None, 4096, 0o640)) == [Code.KEY_PERMISSIONS]
    assert codes(KeyState(path, _key(1), None, 4096, 0o602)) == [Code.KEY_PERMISSIONS]
    assert codes(KeyState(path, b"", None, 0, 0o600)) == [Code.NO_DEVICE, Code.KEY_EMPTY]
    assert codes(KeyState(path, b"", None, 0, 0o644)) == [
        Code.NO_DEVICE,
        Code.KEY_EMPTY,
        Code.KEY_PERMISSIONS,
    ]

    plan, _ = _run(cl, {path: KeyState(path, long[:4097], None, 5000, 0o600)})
    assert plan.devices[0].key == long[:4096]


def test_shared_keys_compare_the_bytes_a_client_uses() -> None:
    cl = _fixture("two-host.conf")
    p1, p2 = (cl.key_path(d) for d in cl.devices)
    same = _key(7)
    _, issues = _run(cl, {p1: _good(p1, same), p2: _good(p2, same)})
    assert [(i.code, i.line) for i in issues] == [(Code.KEY_SHARED, cl.devices[1].line)]
    assert "'xvm-host1', 'xvm-host2'" in issues[0].message

    # Equal in the first 4096 bytes: clients never read the rest, so still shared.
    longer = KeyState(p2, (same + b"tail")[:4097], None, 4100, 0o600)
    _, issues = _run(cl, {p1: _good(p1, same), p2: longer})
    assert {i.code for i in issues} == {Code.KEY_SHARED, Code.KEY_TOO_LONG}

    # A shared key on a device this host does not serve is not this host's problem.
    _, issues = _run(cl, {p1: _good(p1, same), p2: _good(p2, same)}, ["xvm-host1"])
    assert issues == []


# --- node -> VM ------------------------------------------------------------------------------


def test_node_to_domain_in_both_generations() -> None:
    cl = _fixture("old-generation.conf")
    plan, issues = _run(cl, _keys(cl))
    assert _domains(plan) == {"old1": "vm-old1", "old2": "vm-old2", "old3": "old3"}
    assert [(i.code, i.line) for i in issues] == [
        (Code.OLD_PORT, cl.nodes[2].methods[0].devices[0].line)
    ]
    assert "'old3'" in issues[0].message

    cl = _fixture("two-host.conf")
    plan, issues = _run(cl, _keys(cl))
    assert issues == []
    assert _domains(plan) == {
        "node1": "vm-01",
        "node2": "vm-02",
        "node3": "vm-03",
        "node4": "vm-04",
    }


def test_node_name_is_the_vm_when_no_port_or_domain() -> None:
    cl = _fixture("altnames.conf")
    plan, issues = _run(cl, _keys(cl))
    assert issues == []
    assert _domains(plan) == {"ring-a": "vm-ring-a", "ring-b": "vm-ring-b", "ring-c": "ring-c"}


def test_node_targets_carry_names_ids_lines_and_uuid_flag() -> None:
    cl = _fixture("altnames.conf")
    plan, _ = _run(cl, _keys(cl))
    ring_b = cl.nodes[1]
    assert plan.devices[0].nodes[1] == NodeTarget(
        node="ring-b",
        nodeid=2,
        names=("ring-b", "ring-b-r1", "ring-b-storage"),
        domain="vm-ring-b",
        use_uuid=False,
        line=ring_b.methods[0].devices[0].line,
    )

    cl = _fixture("uuid.conf")
    plan, issues = _run(cl, _keys(cl))
    assert issues == []
    assert [(t.node, t.domain, t.use_uuid) for sd in plan.devices for t in sd.nodes] == [
        ("u1", "6f2c0b1e-3d4a-4c5b-9e8f-0a1b2c3d4e5f", True),  # use_uuid on the fencedevice
        ("u2", "0d9e8f7a-6b5c-4d3e-8f1a-2b3c4d5e6f70", True),  # use_uuid on the <device>
    ]


def test_use_uuid_on_the_device_entry_overrides_the_fencedevice() -> None:
    cl = _cluster(
        _nodes_xml(
            _node("a", 1, 'name="x" port="va" use_uuid="0"'),
            _node("b", 2, 'name="x" port="vb"'),
            devices=_xvm("x", 'use_uuid="yes"'),
        )
    )
    plan, _ = _run(cl, _keys(cl))
    assert [(t.node, t.use_uuid) for t in plan.devices[0].nodes] == [("a", False), ("b", True)]


@pytest.mark.parametrize(
    ("attrs", "vm"),
    [
        ({"port": "guest"}, "guest"),
        ({"domain": "guest"}, "guest"),
        ({"domain": "guest", "port": "1229"}, "guest"),
        ({"port": "guest", "domain": "guest"}, "guest"),
        ({"port": "1229"}, "node-a"),
        ({"port": ""}, "node-a"),
        ({}, "node-a"),
    ],
)
def test_vm_for(attrs: dict[str, str], vm: str) -> None:
    cl = _cluster(_nodes_xml(_node("node-a", 1)))
    ref = DeviceRef("x", frozen_attrs(attrs), 1)
    assert vm_for(cl.nodes[0], ref) == vm


def test_node_fenced_through_two_devices_appears_under_both() -> None:
    cl = _cluster(
        _nodes_xml(
            '<clusternode name="a" nodeid="1"><fence>'
            '<method name="1"><device name="x1" port="va"/></method>'
            '<method name="2"><device name="x2" domain="va-copy"/></method>'
            "</fence></clusternode>",
            devices=_xvm("x1") + _xvm("x2"),
        )
    )
    plan, issues = _run(cl, _keys(cl))
    assert issues == []
    assert [[(t.node, t.domain) for t in sd.nodes] for sd in plan.devices] == [
        [("a", "va")],
        [("a", "va-copy")],
    ]


def test_duplicate_domain_is_per_device_and_ignores_case() -> None:
    xml = _nodes_xml(
        _node("a", 1, 'name="x1" port="Guest"'),
        _node("b", 2, 'name="x1" domain="guest"'),
        _node("c", 3, 'name="x2" port="guest"'),
        devices=_xvm("x1") + _xvm("x2"),
    )
    cl = _cluster(xml)
    plan, issues = _run(cl, _keys(cl))
    assert [(i.code, i.line) for i in issues] == [
        (Code.DUPLICATE_DOMAIN, cl.nodes[1].methods[0].devices[0].line)
    ]
    assert "'a' and 'b'" in issues[0].message and "'x1'" in issues[0].message
    # Both targets are still planned; the error keeps the snapshot from being used.
    assert [len(sd.nodes) for sd in plan.devices] == [2, 1]


def test_node_name_too_long_to_be_the_vm() -> None:
    long_name = "n" * 64
    cl = _cluster(
        _nodes_xml(
            _node(long_name, 1, 'name="x"'),
            _node("b", 2, 'name="x" port="vb"'),
            _node("c" * 64, 3, 'name="x" port="vc"'),  # long, but the VM is named by port=
            devices=_xvm("x"),
        )
    )
    _, issues = _run(cl, _keys(cl))
    assert [(i.code, i.line) for i in issues] == [(Code.DOMAIN_TOO_LONG, cl.nodes[0].line)]
    assert "64 bytes" not in issues[0].message and "63 bytes" in issues[0].message


def test_conflicting_domain_only_for_two_different_vm_names() -> None:
    def codes(refattrs: str) -> list[Code]:
        cl = _cluster(_nodes_xml(_node("a", 1, f'name="x" {refattrs}'), devices=_xvm("x")))
        return [i.code for i in _run(cl, _keys(cl))[1]]

    assert codes('port="va" domain="vb"') == [Code.CONFLICTING_DOMAIN]
    assert codes('port="va" domain="va"') == []
    assert codes('port="1229" domain="vb"') == []
    assert codes('port="1229"') == [Code.OLD_PORT]


UUID_A = "00000002-0000-4000-8000-00000000000a"


def test_uuid_shaped_vm_without_use_uuid_warns_at_the_device_entry() -> None:
    upper = "6F2C0B1E-3D4A-4C5B-9E8F-0A1B2C3D4E5F"
    cl = _cluster(
        _nodes_xml(
            _node("a", 1, 'name="x" port="va"'),
            _node("b", 2, f'name="x" port="{UUID_A}"'),
            _node("c", 3, f'name="x" domain="{upper}"'),  # any case
            _node(UUID_A.replace("0a", "0c"), 4, 'name="x"'),  # the node name is the VM
            devices=_xvm("x"),
        )
    )
    plan, issues = _run(cl, _keys(cl))
    refs = [n.methods[0].devices[0] for n in cl.nodes]
    assert [(i.code, i.line, i.file) for i in issues] == [
        (Code.UUID_SHAPED_VM, refs[1].line, CONF),
        (Code.UUID_SHAPED_VM, refs[2].line, CONF),
        (Code.UUID_SHAPED_VM, refs[3].line, CONF),
    ]
    assert all(i.severity is Severity.WARNING for i in issues)
    assert issues[0].message == (
        f"node 'b': VM '{UUID_A}' has the form of a UUID but use_uuid is not set; it will be "
        "matched against domain names and UUIDs, and refused if they name different domains "
        '(set use_uuid="1" if it is a UUID, or rename the VM)'
    )
    assert f"'{upper}'" in issues[1].message
    # A warning: the targets are still planned, as written.
    assert [(t.node, t.domain, t.use_uuid) for t in plan.devices[0].nodes][1:3] == [
        ("b", UUID_A, False),
        ("c", upper, False),
    ]


@pytest.mark.parametrize(
    ("ref", "device"),
    [
        (f'port="{UUID_A}" use_uuid="1"', ""),  # use_uuid on the <device> entry
        (f'domain="{UUID_A}" use_uuid="yes"', ""),
        (f'port="{UUID_A}"', 'use_uuid="1"'),  # use_uuid on the fencedevice
        ('port="vm-b"', ""),  # ordinary names
        ('port="web-01"', 'use_uuid="0"'),
        (f'port="{{{UUID_A}}}"', ""),  # not the canonical form: braces,
        (f'port="{UUID_A.replace("-", "")}"', ""),  # no dashes,
        (f'port="{UUID_A[:-1]}"', ""),  # one digit short,
        (f'port="{UUID_A}-b"', ""),  # trailing text,
        (f'port="{UUID_A[:-1]}g"', ""),  # not hex
    ],
)
def test_no_uuid_shaped_warning(ref: str, device: str) -> None:
    cl = _cluster(
        _nodes_xml(
            _node("a", 1, 'name="x" port="va"'),
            _node("b", 2, f'name="x" {ref}'),
            devices=_xvm("x", device),
        )
    )
    plan, issues = _run(cl, _keys(cl))
    assert issues == [], [i.render() for i in issues]
    assert len(plan.devices[0].nodes) == 2


def test_use_uuid_0_on_the_device_entry_overrides_the_fencedevice_for_the_warning() -> None:
    cl = _cluster(
        _nodes_xml(
            _node("a", 1, f'name="x" port="{UUID_A}" use_uuid="0"'),
            devices=_xvm("x", 'use_uuid="1"'),
        )
    )
    _, issues = _run(cl, _keys(cl))
    assert [(i.code, i.line) for i in issues] == [
        (Code.UUID_SHAPED_VM, cl.nodes[0].methods[0].devices[0].line)
    ]


def test_uuid_shaped_warning_is_per_served_device() -> None:
    cl = _cluster(
        _nodes_xml(
            '<clusternode name="a" nodeid="1"><fence>'
            f'<method name="1"><device name="x1" port="{UUID_A}"/></method>'
            '<method name="2"><device name="x2" port="va"/></method>'
            "</fence></clusternode>",
            devices=_xvm("x1") + _xvm("x2"),
        )
    )
    _, issues = _run(cl, _keys(cl))
    assert [i.code for i in issues] == [Code.UUID_SHAPED_VM]
    _, issues = _run(cl, _keys(cl), ["x2"])  # x1 not served here: not this host's VM
    assert issues == []


# --- structure -------------------------------------------------------------------------------


def test_duplicate_names_include_altnames_and_ignore_case() -> None:
    cl = _cluster(
        _nodes_xml(
            _node("a", 1, 'name="x" port="va"', alt='<altname name="a"/><altname name="a-r1"/>'),
            _node("B", 2, 'name="x" port="vb"', alt='<altname name="A-R1"/>'),
            _node("b", 3, 'name="x" port="vc"'),
            devices=_xvm("x"),
        )
    )
    _, issues = _run(cl, _keys(cl))
    assert [i.code for i in issues] == [Code.DUPLICATE_NODE_NAME] * 2
    assert [i.line for i in issues] == [cl.nodes[1].altnames[0].line, cl.nodes[2].line]
    assert "'A-R1'" in issues[0].message
    assert f"'a' (line {cl.nodes[0].line})" in issues[0].message
    assert "'b'" in issues[1].message and "'B'" in issues[1].message


def test_undefined_device_in_unfence_and_unused_non_xvm_devices() -> None:
    cl = _cluster(
        _nodes_xml(
            '<clusternode name="a" nodeid="1"><fence><method name="1">'
            '<device name="x" port="va"/></method></fence>'
            '<unfence><device name="scsi" action="on"/></unfence></clusternode>',
            devices=_xvm("x") + '<fencedevice name="ipmi" agent="fence_ipmilan"/>',
        )
    )
    _, issues = _run(cl, _keys(cl))
    assert [i.code for i in issues] == [Code.UNDEFINED_DEVICE]
    assert "unfence" in issues[0].message and "'scsi'" in issues[0].message


def test_unused_xvm_device_is_still_served() -> None:
    cl = _cluster(
        _nodes_xml(_node("a", 1, 'name="x1" port="va"'), devices=_xvm("x1") + _xvm("spare"))
    )
    plan, issues = _run(cl, _keys(cl))
    assert [i.code for i in issues] == [Code.UNUSED_DEVICE]
    assert _served(plan) == ["x1", "spare"]
    assert plan.devices[1].nodes == ()


@pytest.mark.parametrize(
    ("cman", "nodes", "codes"),
    [
        ('two_node="1" expected_votes="1"', 2, []),
        ('two_node="1"', 2, []),
        ('two_node="1" expected_votes="2"', 2, [Code.TWO_NODE_VOTES]),
        ('two_node="1" expected_votes="1"', 3, [Code.TWO_NODE_COUNT]),
        ('two_node="1" expected_votes="3"', 1, [Code.TWO_NODE_VOTES, Code.TWO_NODE_COUNT]),
        ('two_node="0" expected_votes="3"', 3, []),
    ],
)
def test_two_node_rules(cman: str, nodes: int, codes: list[Code]) -> None:
    xml = _nodes_xml(
        *(_node(f"n{i}", i, f'name="x" port="v{i}"') for i in range(1, nodes + 1)),
        devices=_xvm("x"),
        extra=f"<cman {cman}/>",
    )
    cl = _cluster(xml)
    _, issues = _run(cl, _keys(cl))
    assert [i.code for i in issues] == codes
    assert all(i.line == cl.cman.line for i in issues)


def test_validate_reports_everything_at_once() -> None:
    cl = _cluster(
        _nodes_xml(
            _node("a", 1, 'name="x1" port="dup"'),
            _node("A", 1, 'name="x1" port="dup"'),
            _node("c", 3, 'name="gone"'),
            _node("d", 4),
            devices=_xvm("x1") + _xvm("x1") + _xvm("x2"),
            extra='<cman two_node="1" expected_votes="2"/>',
        )
    )
    plan, issues = _run(cl, _keys(cl, x1=_key(1), x2=_key(1)))
    assert sorted(str(i.code) for i in issues) == sorted(
        [
            "duplicate-node-name",
            "duplicate-nodeid",
            "undefined-device",
            "node-not-fenced",
            "duplicate-device-name",
            "unused-device",
            "two-node-votes",
            "two-node-count",
            "duplicate-domain",
            "key-shared",
        ]
    )
    assert [i.line for i in issues] == sorted(i.line for i in issues)
    assert _served(plan) == ["x1", "x2"]
