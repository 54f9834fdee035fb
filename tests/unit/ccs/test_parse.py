"""ccs.parse: the model built from the valid fixtures, value checks, and XML safety."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from ccs import Cluster, Code
from ccs.issues import Issue
from ccs.model import DEFAULT_KEY_FILE, ClusterNode
from ccs.parse import parse
from tests.unit.ccs.cases import CCS_DIR, VALID_FIXTURES, line_of


def _parse_fixture(name: str) -> tuple[Cluster, Path]:
    path = CCS_DIR / name
    cluster, issues = parse(path.read_bytes(), str(path))
    assert issues == [], [i.render() for i in issues]
    assert cluster is not None
    return cluster, path


def _parse(xml: str) -> tuple[Cluster | None, list[Issue]]:
    return parse(xml.encode(), "cluster.conf")


def _codes(xml: str) -> list[Code]:
    return [i.code for i in _parse(xml)[1]]


def _node(cluster: Cluster, name: str) -> ClusterNode:
    return next(n for n in cluster.nodes if n.name == name)


MINIMAL = '<cluster name="c" config_version="1"><clusternodes/>{}</cluster>'


def _with_device(attrs: str) -> str:
    return MINIMAL.format(
        f'<fencedevices><fencedevice name="d" agent="fence_xvm" {attrs}/></fencedevices>'
    )


# --- the model from the valid fixtures -------------------------------------------------------


@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_valid_fixtures_parse_without_issues(name: str) -> None:
    cluster, path = _parse_fixture(name)
    assert cluster.file == str(path)
    assert cluster.line == line_of(path, "<cluster ")
    assert cluster.nodes


def test_two_host_model() -> None:
    cl, path = _parse_fixture("two-host.conf")
    assert (cl.name, cl.config_version) == ("guests", 7)
    assert (cl.cman.expected_votes, cl.cman.two_node) == (3, False)
    assert cl.cman.line == line_of(path, "<cman ")
    assert [(n.name, n.nodeid, n.votes) for n in cl.nodes] == [
        ("node1", 1, 1),
        ("node2", 2, 1),
        ("node3", 3, 1),
        ("node4", 4, 1),
    ]
    node2 = _node(cl, "node2")
    assert [(a.name, a.line) for a in node2.altnames] == [
        ("node2-ring1", line_of(path, "node2-ring1"))
    ]
    assert node2.names == ("node2", "node2-ring1")
    assert node2.line == line_of(path, 'name="node2"')
    (method,) = node2.methods
    assert method.name == "1"
    (ref,) = method.devices
    assert ref.name == "xvm-host1"
    assert dict(ref.attrs) == {"domain": "vm-02"}
    assert ref.line == line_of(path, 'domain="vm-02"')
    assert method.line == ref.line - 1
    assert node2.unfence == ()
    assert [dict(r.attrs) for n in cl.nodes for m in n.methods for r in m.devices] == [
        {"port": "vm-01"},
        {"domain": "vm-02"},
        {"port": "vm-03"},
        {"port": "vm-04"},
    ]
    assert [(d.name, d.agent, dict(d.attrs), d.is_xvm) for d in cl.devices] == [
        ("xvm-host1", "fence_xvm", {"key_file": "../keys/host1.key"}, True),
        ("xvm-host2", "fence_xvm", {"key_file": "../keys/host2.key"}, True),
    ]
    assert cl.device("xvm-host2") is cl.devices[1]
    assert cl.device("nope") is None
    assert cl.fence_xvmd is not None
    assert (dict(cl.fence_xvmd.attrs), cl.fence_xvmd.devices) == ({}, ())
    assert cl.fence_xvmd.line == line_of(path, "<fence_xvmd")


def test_method_line_is_the_method_element() -> None:
    cl, path = _parse_fixture("qdisk.conf")
    lines = path.read_text().splitlines()
    for node in cl.nodes:
        for method in node.methods:
            assert f'<method name="{method.name}">' in lines[method.line - 1]
            for ref in method.devices:
                assert f'<device name="{ref.name}"' in lines[ref.line - 1]


def test_two_node_model() -> None:
    cl, _ = _parse_fixture("two-node.conf")
    assert (cl.name, cl.config_version) == ("pair", 3)
    assert (cl.cman.two_node, cl.cman.expected_votes) == (True, 1)
    assert [(n.name, n.nodeid) for n in cl.nodes] == [
        ("pair-a.example.com", 1),
        ("pair-b.example.com", 2),
    ]
    assert [d.name for d in cl.devices] == ["xvm-host1"]
    assert {r.name for n in cl.nodes for m in n.methods for r in m.devices} == {"xvm-host1"}
    assert cl.fence_xvmd is None


def test_sixteen_nodes_model() -> None:
    cl, _ = _parse_fixture("sixteen-nodes.conf")
    assert (cl.name, cl.config_version, cl.cman.expected_votes) == ("farm16", 42, 9)
    assert [n.nodeid for n in cl.nodes] == list(range(1, 17))
    assert all(n.votes == 1 for n in cl.nodes)
    for n in cl.nodes:
        (method,) = n.methods
        (ref,) = method.devices
        assert ref.name == f"xvm-host{(n.nodeid - 1) // 4 + 1}"
        assert dict(ref.attrs) == {"port": f"guest-{n.nodeid:02d}"}
    assert [(d.name, d.attrs["multicast_address"], d.key_file) for d in cl.devices] == [
        (f"xvm-host{h}", f"225.0.0.1{h}", f"../keys/host{h}.key") for h in range(1, 5)
    ]


def test_qdisk_model_ignores_other_elements_but_keeps_fencing() -> None:
    cl, _ = _parse_fixture("qdisk.conf")
    assert (cl.name, cl.config_version, cl.cman.expected_votes) == ("qcluster", 118, 5)
    assert [(n.name, n.votes) for n in cl.nodes] == [("qn1", 1), ("qn2", 1), ("qn3", 0)]
    qn1 = _node(cl, "qn1")
    assert [(m.name, [r.name for r in m.devices]) for m in qn1.methods] == [
        ("xvm", ["xvm-host1"]),
        ("scsi", ["scsi-fence"]),
    ]
    assert [(r.name, dict(r.attrs)) for r in qn1.unfence] == [("scsi-fence", {"action": "on"})]
    assert _node(cl, "qn3").unfence == ()
    assert [(d.name, d.agent, d.is_xvm) for d in cl.devices] == [
        ("xvm-host1", "fence_xvm", True),
        ("xvm-host2", "fence_xvm", True),
        ("scsi-fence", "fence_scsi", False),
    ]
    assert dict(cl.devices[2].attrs) == {
        "devices": "/dev/mapper/shared",
        "logfile": "/var/log/cluster/fence_scsi.log",
    }
    assert cl.devices[0].attrs["timeout"] == "30"
    assert cl.fence_xvmd is None


def test_old_generation_attributes_are_kept_verbatim() -> None:
    cl, _ = _parse_fixture("old-generation.conf")
    assert [dict(r.attrs) for n in cl.nodes for m in n.methods for r in m.devices] == [
        {"domain": "vm-old1", "port": "1229"},
        {"domain": "vm-old2"},
        {"port": "1229"},
    ]
    (dev,) = cl.devices
    assert dict(dev.attrs) == {
        "key_file": "../keys/host1.key",
        "port": "1229",
        "multicast_ttl": "2",
        "option": "reboot",
    }


def test_fence_xvmd_settings_model() -> None:
    cl, path = _parse_fixture("fence-xvmd-settings.conf")
    assert cl.fence_xvmd is not None
    assert dict(cl.fence_xvmd.attrs) == {
        "key_file": "/etc/cluster/fence_xvm-host1.key",
        "multicast_address": "225.0.0.12",
        "port": "1229",
        "interface": "virbr0",
        "ip_family": "ipv4",
        "hash": "sha256",
        "auth": "sha256",
        "uri": "qemu:///system",
        "use_uuid": "0",
        "debug": "2",
    }
    assert cl.fence_xvmd.devices == ("xvm-host1",)
    assert cl.fence_xvmd.line == line_of(path, "<fence_xvmd")
    assert cl.cman.expected_votes is None and not cl.cman.two_node and cl.cman.line == 0


def test_altnames_model() -> None:
    cl, path = _parse_fixture("altnames.conf")
    assert [n.names for n in cl.nodes] == [
        ("ring-a", "ring-a-r1"),
        ("ring-b", "ring-b-r1", "ring-b-storage"),
        ("ring-c",),
    ]
    ring_b = _node(cl, "ring-b")
    assert [a.line for a in ring_b.altnames] == [
        line_of(path, "ring-b-r1"),
        line_of(path, "ring-b-storage"),
    ]
    assert dict(ring_b.methods[0].devices[0].attrs) == {"port": "vm-ring-b"}
    assert dict(_node(cl, "ring-c").methods[0].devices[0].attrs) == {}


def test_uuid_model() -> None:
    cl, _ = _parse_fixture("uuid.conf")
    assert dict(cl.devices[0].attrs) == {"key_file": "../keys/host1.key", "use_uuid": "1"}
    assert cl.devices[1].agent == "fence_virt" and cl.devices[1].is_xvm
    u2 = _node(cl, "u2").methods[0].devices[0]
    assert dict(u2.attrs) == {"port": "0d9e8f7a-6b5c-4d3e-8f1a-2b3c4d5e6f70", "use_uuid": "1"}


def test_model_is_immutable() -> None:
    cl, _ = _parse_fixture("two-host.conf")
    with pytest.raises(TypeError):
        cl.devices[0].attrs["key_file"] = "/tmp/other.key"  # type: ignore[index]
    with pytest.raises(AttributeError):
        cl.name = "other"  # type: ignore[misc]


def test_default_key_file() -> None:
    cl, issues = _parse(
        MINIMAL.format('<fencedevices><fencedevice name="d" agent="fence_xvm"/></fencedevices>')
    )
    assert issues == [] and cl is not None
    assert cl.devices[0].key_file == DEFAULT_KEY_FILE == "/etc/cluster/fence_xvm.key"
    assert cl.key_path(cl.devices[0]) == DEFAULT_KEY_FILE


def test_fence_xvmd_device_list_accepts_commas_and_spaces() -> None:
    cl, issues = _parse(MINIMAL.format('<fence_xvmd device=" a, b  c,,d "/>'))
    assert issues == [] and cl is not None and cl.fence_xvmd is not None
    assert cl.fence_xvmd.devices == ("a", "b", "c", "d")
    assert "device" not in cl.fence_xvmd.attrs


def test_unknown_elements_comments_and_namespaces_are_accepted() -> None:
    xml = """<?xml version="1.0"?>
<!-- leading comment -->
<cluster xmlns="urn:example" name="c" config_version="1">
  <dlm protocol="sctp"/>
  <clusternodes>
    <!-- a comment between nodes -->
    <clusternode name="a" nodeid="1"><fence/></clusternode>
  </clusternodes>
  <whatever><nested deep="1"/></whatever>
</cluster>
"""
    cl, issues = _parse(xml)
    assert issues == [] and cl is not None
    assert [n.name for n in cl.nodes] == ["a"]
    assert cl.nodes[0].methods == ()


# --- structure and value problems ------------------------------------------------------------


def test_xml_syntax_error_line() -> None:
    path = CCS_DIR / "invalid-xml-syntax.conf"
    cl, issues = parse(path.read_bytes(), str(path))
    assert cl is None
    assert [(i.code, i.line) for i in issues] == [(Code.XML_SYNTAX, line_of(path, "</clusternod>"))]


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ('<cluster config_version="1"><clusternodes/></cluster>', [Code.MISSING_ATTRIBUTE]),
        (
            '<cluster name=" " config_version="1"><clusternodes/></cluster>',
            [Code.MISSING_ATTRIBUTE],
        ),
        ('<cluster name="c"><clusternodes/></cluster>', [Code.MISSING_ATTRIBUTE]),
        ('<cluster name="c" config_version="0"><clusternodes/></cluster>', [Code.BAD_NUMBER]),
        ('<cluster name="c" config_version="v2"><clusternodes/></cluster>', [Code.BAD_NUMBER]),
        ('<cluster name="c" config_version="1"/>', [Code.MISSING_ELEMENT]),
        ("<cluster/>", [Code.MISSING_ATTRIBUTE, Code.MISSING_ATTRIBUTE, Code.MISSING_ELEMENT]),
    ],
)
def test_unusable_cluster_element(root: str, expected: list[Code]) -> None:
    cl, issues = _parse(root)
    assert cl is None
    assert [i.code for i in issues] == expected
    assert all(i.line == 1 and i.file == "cluster.conf" for i in issues)


def test_node_problems_drop_the_node_but_keep_checking() -> None:
    xml = """<cluster name="c" config_version="1">
  <clusternodes>
    <clusternode nodeid="1"/>
    <clusternode name="b" nodeid="0"/>
    <clusternode name="c" nodeid="3" votes="-1">
      <altname/>
      <fence><method><device port="x"/></method></fence>
    </clusternode>
    <clusternode name="d" nodeid="4" votes="0"/>
  </clusternodes>
</cluster>"""
    cl, issues = _parse(xml)
    assert [(i.line, i.code) for i in issues] == [
        (3, Code.MISSING_ATTRIBUTE),
        (4, Code.BAD_NUMBER),
        (5, Code.BAD_NUMBER),
        (6, Code.MISSING_ATTRIBUTE),
        (7, Code.MISSING_ATTRIBUTE),
        (7, Code.MISSING_ATTRIBUTE),
    ]
    assert cl is not None
    assert [(n.name, n.votes) for n in cl.nodes] == [("c", 1), ("d", 0)]
    c = cl.nodes[0]
    assert c.altnames == ()
    assert [(m.name, m.devices) for m in c.methods] == [("?", ())]


@pytest.mark.parametrize("value", ["1", "65535", " 1229 ", "01229"])
def test_good_ports(value: str) -> None:
    assert _codes(_with_device(f'ipport="{value}"')) == []


@pytest.mark.parametrize("value", ["0", "65536", "-1", "", "12a", "1229.0"])
def test_bad_ports(value: str) -> None:
    assert _codes(_with_device(f'ipport="{value}"')) == [Code.BAD_PORT]
    assert _codes(MINIMAL.format(f'<fence_xvmd port="{value}"/>')) == [Code.BAD_PORT]
    ref = (
        '<clusternodes><clusternode name="a" nodeid="1"><fence><method name="1">'
        f'<device name="d" ipport="{value}"/></method></fence></clusternode></clusternodes>'
    )
    assert _codes(f'<cluster name="c" config_version="1">{ref}</cluster>') == [Code.BAD_PORT]


@pytest.mark.parametrize(
    "xml",
    [
        _with_device('ipport="²"'),
        MINIMAL.format('<fence_xvmd port="①"/>'),
        '<cluster name="c" config_version="1"><clusternodes><clusternode name="a" nodeid="1">'
        '<fence><method name="1"><device name="d" ipport="²"/></method></fence></clusternode>'
        "</clusternodes></cluster>",
    ],
    ids=["fencedevice-ipport", "fence_xvmd-port", "device-ipport"],
)
def test_unicode_digit_port_is_reported_not_raised(xml: str) -> None:
    assert _codes(xml) == [Code.BAD_PORT]


@pytest.mark.parametrize("value", ["3", " 3 ", "+3"])
def test_numbers_accept_plain_decimals(value: str) -> None:
    cl, issues = _parse(f'<cluster name="c" config_version="{value}"><clusternodes/></cluster>')
    assert issues == [] and cl is not None and cl.config_version == 3


@pytest.mark.parametrize("value", ["1_0", "١٢"])
def test_numbers_reject_what_cman_reads_differently(value: str) -> None:
    assert _codes(f'<cluster name="c" config_version="{value}"><clusternodes/></cluster>') == [
        Code.BAD_NUMBER
    ]


@pytest.mark.parametrize(
    ("attr", "good", "bad"),
    [
        ("hash", ["none", "sha1", "SHA256", "sha512"], ["md5", "sha384", ""]),
        ("auth", ["none", "sha1", "sha256", "Sha512"], ["md5", "sha"]),
        ("ip_family", ["auto", "ipv4", "IPv6"], ["inet", "4", ""]),
        ("multicast_address", ["225.0.0.12", "ff05::3:1"], ["10.0.0.1", "::1", "host", ""]),
        ("use_uuid", ["0", "1", "yes", "No", "TRUE", "off"], ["2", "y", ""]),
        ("debug", ["0", "5"], ["-1", "high"]),
    ],
)
def test_xvm_option_values(attr: str, good: list[str], bad: list[str]) -> None:
    code = {
        "hash": Code.BAD_HASH,
        "auth": Code.BAD_HASH,
        "ip_family": Code.BAD_FAMILY,
        "multicast_address": Code.BAD_ADDRESS,
        "use_uuid": Code.BAD_BOOLEAN,
        "debug": Code.BAD_NUMBER,
    }[attr]
    for value in good:
        assert _codes(_with_device(f'{attr}="{value}"')) == [], value
        assert _codes(MINIMAL.format(f'<fence_xvmd {attr}="{value}"/>')) == [], value
    for value in bad:
        assert _codes(_with_device(f'{attr}="{value}"')) == [code], value
        assert _codes(MINIMAL.format(f'<fence_xvmd {attr}="{value}"/>')) == [code], value


def test_options_of_other_agents_are_not_checked() -> None:
    xml = MINIMAL.format(
        '<fencedevices><fencedevice name="ipmi" agent="fence_ipmilan" hash="md5" ipport="x" '
        'multicast_address="1.2.3.4"/></fencedevices>'
    )
    cl, issues = _parse(xml)
    assert issues == [] and cl is not None
    assert cl.devices[0].attrs["hash"] == "md5"


def test_fence_virt_options_are_checked_like_fence_xvm() -> None:
    xml = MINIMAL.format(
        '<fencedevices><fencedevice name="v" agent="fence_virt" hash="md5"/></fencedevices>'
    )
    assert _codes(xml) == [Code.BAD_HASH]


def test_cman_values() -> None:
    def cman(attrs: str) -> tuple[Cluster | None, list[Code]]:
        cl, issues = _parse(
            f'<cluster name="c" config_version="1"><cman {attrs}/><clusternodes/></cluster>'
        )
        return cl, [i.code for i in issues]

    cl, codes = cman('two_node="yes" expected_votes="1"')
    assert codes == [] and cl is not None and cl.cman.two_node and cl.cman.expected_votes == 1
    cl, codes = cman('two_node="2"')
    assert codes == [Code.BAD_BOOLEAN] and cl is not None and not cl.cman.two_node
    cl, codes = cman('expected_votes="0"')
    assert codes == [Code.BAD_NUMBER] and cl is not None and cl.cman.expected_votes is None


def test_domain_length_limit_is_in_bytes() -> None:
    def ref(attrs: str) -> str:
        return (
            '<cluster name="c" config_version="1"><clusternodes><clusternode name="a" '
            f'nodeid="1"><fence><method name="1"><device name="d" {attrs}/></method></fence>'
            "</clusternode></clusternodes></cluster>"
        )

    assert _codes(ref(f'port="{"v" * 63}"')) == []
    assert _codes(ref(f'domain="{"v" * 63}"')) == []
    assert _codes(ref(f'port="{"v" * 64}"')) == [Code.DOMAIN_TOO_LONG]
    assert _codes(ref(f'domain="{"v" * 64}"')) == [Code.DOMAIN_TOO_LONG]
    # 32 two-byte characters: 32 characters but 64 bytes.
    assert _codes(ref(f'port="{"é" * 32}"')) == [Code.DOMAIN_TOO_LONG]
    assert _codes(ref(f'port="{"é" * 31}x"')) == []


def test_cluster_name_length_limit() -> None:
    def named(name: str) -> list[Code]:
        return _codes(f'<cluster name="{name}" config_version="1"><clusternodes/></cluster>')

    assert named("a" * 16) == []
    assert named("a" * 17) == [Code.CLUSTER_NAME_LONG]


def test_issues_come_in_file_order() -> None:
    xml = """<cluster name="c" config_version="1">
  <clusternodes>
    <clusternode name="a" nodeid="x"/>
  </clusternodes>
  <fencedevices>
    <fencedevice name="d" agent="fence_xvm" hash="md5"/>
  </fencedevices>
  <fence_xvmd port="0"/>
  <cman expected_votes="none"/>
</cluster>"""
    _, issues = _parse(xml)
    assert [(i.line, i.code) for i in issues] == [
        (3, Code.BAD_NUMBER),
        (6, Code.BAD_HASH),
        (8, Code.BAD_PORT),
        (9, Code.BAD_NUMBER),
    ]


# --- XML safety ------------------------------------------------------------------------------


def _all_text(cluster: Cluster | None, issues: list[Issue]) -> str:
    return repr(cluster) + repr(issues)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-4f1d\n")
    return path


def test_external_entity_in_content_is_not_read(secret: Path) -> None:
    xml = f"""<?xml version="1.0"?>
<!DOCTYPE cluster [
  <!ENTITY x SYSTEM "file://{secret}">
  <!ENTITY pw SYSTEM "file:///etc/passwd">
]>
<cluster name="c" config_version="1">
  <clusternodes>
    <clusternode name="a" nodeid="1">&x;&pw;<fence/></clusternode>
  </clusternodes>
</cluster>"""
    cl, issues = _parse(xml)
    assert issues == [] and cl is not None
    text = _all_text(cl, issues)
    assert "TOP-SECRET" not in text
    assert "root:" not in text


@pytest.mark.parametrize("target", ["secret", "/etc/passwd"])
def test_external_entity_in_attribute_is_refused(secret: Path, target: str) -> None:
    url = f"file://{secret}" if target == "secret" else "file:///etc/passwd"
    xml = f"""<?xml version="1.0"?>
<!DOCTYPE cluster [<!ENTITY x SYSTEM "{url}">]>
<cluster name="&x;" config_version="1"><clusternodes/></cluster>"""
    cl, issues = _parse(xml)
    assert cl is None
    assert [i.code for i in issues] == [Code.XML_SYNTAX]
    text = _all_text(cl, issues)
    assert "TOP-SECRET" not in text and "root:" not in text


def test_external_dtd_is_not_loaded(tmp_path: Path) -> None:
    """The DTD file is broken: a parser that read it would fail (the control shows so)."""
    dtd = tmp_path / "broken.dtd"
    dtd.write_text("<!ENTITY broken\n garbage <<<")
    xml = f"""<?xml version="1.0"?>
<!DOCTYPE cluster SYSTEM "file://{dtd}">
<cluster name="c" config_version="1">
  <clusternodes><clusternode name="a" nodeid="1"><fence/></clusternode></clusternodes>
</cluster>"""
    cl, issues = _parse(xml)
    assert issues == [] and cl is not None and cl.name == "c"
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(xml.encode(), etree.XMLParser(load_dtd=True))


def test_external_parameter_entity_is_not_expanded(secret: Path) -> None:
    decl = secret.with_name("decl.ent")
    decl.write_text(f'<!ENTITY leak SYSTEM "file://{secret}">')
    xml = f"""<?xml version="1.0"?>
<!DOCTYPE cluster [
  <!ENTITY % p SYSTEM "file://{decl}">
  %p;
]>
<cluster name="c" config_version="1">
  <clusternodes><clusternode name="a" nodeid="1">&leak;<fence/></clusternode></clusternodes>
</cluster>"""
    cl, issues = _parse(xml)
    assert issues == [] and cl is not None
    assert "TOP-SECRET" not in _all_text(cl, issues)


def test_entity_expansion_bomb_is_refused() -> None:
    defs = ['<!ENTITY e0 "' + "a" * 10 + '">']
    for n in range(1, 9):
        defs.append(f'<!ENTITY e{n} "' + f"&e{n - 1};" * 10 + '">')
    xml = (
        f"<!DOCTYPE cluster [{''.join(defs)}]>"
        '<cluster name="&e8;" config_version="1"><clusternodes/></cluster>'
    )
    cl, issues = _parse(xml)
    assert cl is None
    assert [i.code for i in issues] == [Code.XML_SYNTAX]


def test_internal_entities_in_attributes_are_expanded() -> None:
    """Documented behaviour, not a leak: libxml2 substitutes internal entities in attribute
    values even with resolve_entities=False (only the content nodes stay unexpanded)."""
    xml = (
        '<!DOCTYPE cluster [<!ENTITY n "expanded">]>'
        '<cluster name="&n;" config_version="1"><clusternodes/></cluster>'
    )
    cl, issues = _parse(xml)
    assert issues == [] and cl is not None
    assert cl.name == "expanded"
