"""Line numbers: a problem with an attribute points at the attribute's line, one with an element
at the line where its start tag begins (libxml2's sourceline is where the tag ENDS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

import ccs
from ccs import Code
from ccs.lines import SourceLines
from ccs.parse import parse

MULTILINE_DEVICE = """<?xml version="1.0"?>
<cluster name="c" config_version="1">
  <clusternodes>
    <clusternode name="a" nodeid="1"/>
  </clusternodes>
  <fencedevices>
    <fencedevice name="xvm"
                 agent="fence_xvm"
                 hash="md5"
                 key_file="/nonexistent/key"/>
  </fencedevices>
</cluster>
"""


def _issues(xml: str) -> list[tuple[int, Code]]:
    return [(i.line, i.code) for i in parse(xml.encode(), "cluster.conf")[1]]


def test_libxml2_sourceline_is_where_the_start_tag_ends() -> None:
    """The premise of ccs.lines; if libxml2 changes this, the lookups must be revisited."""
    root = etree.fromstring(MULTILINE_DEVICE.encode())
    line: object = next(root.iter("fencedevice")).sourceline
    assert line == 10


def test_bad_value_points_at_its_attribute_line() -> None:
    assert _issues(MULTILINE_DEVICE) == [(9, Code.BAD_HASH)]


def test_element_line_is_where_its_start_tag_begins() -> None:
    cl, _ = parse(MULTILINE_DEVICE.encode(), "cluster.conf")
    assert cl is not None
    assert cl.devices[0].line == 7


def test_missing_attribute_points_at_the_start_of_a_multiline_tag() -> None:
    xml = """<cluster name="c" config_version="1">
  <clusternodes>
    <clusternode name="a" nodeid="1"/>
    <clusternode
        nodeid="2"
        votes="1">
    </clusternode>
  </clusternodes>
</cluster>
"""
    assert _issues(xml) == [(4, Code.MISSING_ATTRIBUTE)]


def test_model_lines_and_cross_checks_use_the_start_line(tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    key.write_bytes(b"k" * 4096)
    key.chmod(0o600)
    conf = tmp_path / "cluster.conf"
    conf.write_text(
        f"""<cluster name="c" config_version="1">
  <clusternodes>
    <clusternode name="a" nodeid="1">
      <altname
          name="a-r1"/>
      <fence><method
          name="1"><device
          name="xvm"
          port="vm-a"/></method></fence>
    </clusternode>
    <clusternode
        name="b"
        nodeid="1">
      <fence><method name="1"><device name="xvm" port="vm-b"/></method></fence>
    </clusternode>
  </clusternodes>
  <fencedevices>
    <fencedevice
        name="xvm" agent="fence_xvm" key_file="{key}"/>
  </fencedevices>
</cluster>
"""
    )
    result = ccs.load(str(conf))
    assert [(i.line, i.code) for i in result.issues] == [(11, Code.DUPLICATE_NODEID)]
    assert "(line 3)" in result.issues[0].message
    cl = result.cluster
    assert cl is not None
    a, b = cl.nodes
    assert (a.line, a.altnames[0].line, a.methods[0].line, a.methods[0].devices[0].line) == (
        3,
        4,
        6,
        7,
    )
    assert b.line == 11
    assert cl.devices[0].line == 18
    assert result.plan is not None
    assert [t.line for t in result.plan.devices[0].nodes] == [7, 14]


@pytest.mark.parametrize(
    ("attrs", "line", "code"),
    [
        ('\n    ipport="0"', 2, Code.BAD_PORT),
        ('ipport = "0"\n   ', 1, Code.BAD_PORT),
        ('\n  \n    multicast_address\n   =\n   "10.0.0.1"', 3, Code.BAD_ADDRESS),
        ("\n    ip_family='inet'", 2, Code.BAD_FAMILY),
        ('\n    use_uuid="maybe"', 2, Code.BAD_BOOLEAN),
        ('\n    debug="x"', 2, Code.BAD_NUMBER),
    ],
    ids=["ipport", "same-line", "spaces-around-equals", "single-quotes", "boolean", "number"],
)
def test_every_value_check_points_at_its_attribute(attrs: str, line: int, code: Code) -> None:
    xml = (
        '<cluster name="c" config_version="1"><clusternodes/><fencedevices><fencedevice '
        f'name="d" agent="fence_xvm" {attrs}/></fencedevices></cluster>'
    )
    assert _issues(xml) == [(line, code)]


def test_a_quoted_value_that_looks_like_the_attribute_is_not_it() -> None:
    xml = """<cluster name="c" config_version="1"><clusternodes/><fencedevices>
<fencedevice name="d" agent="fence_xvm"
  comment=' hash="x" > '
  hash="md5"/>
</fencedevices></cluster>"""
    assert _issues(xml) == [(4, Code.BAD_HASH)]


def test_numbers_and_domains_of_nodes_point_at_their_attributes() -> None:
    xml = """<cluster
    name="c"
    config_version="v1">
  <clusternodes>
    <clusternode name="a"
        nodeid="1"
        votes="-1">
      <fence><method name="1"><device name="d"
          port="%s"/></method></fence>
    </clusternode>
  </clusternodes>
</cluster>""" % ("v" * 64)
    assert _issues(xml) == [
        (3, Code.BAD_NUMBER),
        (7, Code.BAD_NUMBER),
        (9, Code.DOMAIN_TOO_LONG),
    ]


def test_comments_cdata_and_doctype_do_not_confuse_the_lookup() -> None:
    xml = """<?xml version="1.0"?>
<!DOCTYPE cluster [
  <!ENTITY fake "<fencedevice
     hash='inside-an-entity'>">
  <!-- <fencedevice
     hash="in-a-dtd-comment" -->
]>
<cluster name="c" config_version="1">
  <!-- <fencedevice
       hash="in-a-comment"> -->
  <clusternodes/>
  <notes><![CDATA[ <fencedevice
       hash="in-cdata"> ]]></notes>
  <fencedevices>
    <fencedevice name="d" agent="fence_xvm"
       hash="md5"/>
  </fencedevices>
</cluster>"""
    assert _issues(xml) == [(16, Code.BAD_HASH)]


def test_same_name_tag_after_a_multiline_one_on_its_last_line() -> None:
    xml = """<cluster name="c" config_version="1"><clusternodes/><fencedevices>
<fencedevice name="d1" agent="fence_xvm"
   hash="md5"/><fencedevice name="d2" agent="fence_xvm" hash="sha"/>
</fencedevices></cluster>"""
    cl, issues = parse(xml.encode(), "cluster.conf")
    assert [(i.line, i.code, "md5" in i.message) for i in issues] == [
        (3, Code.BAD_HASH, True),
        (3, Code.BAD_HASH, False),
    ]
    assert cl is not None
    assert [d.line for d in cl.devices] == [2, 3]


def test_namespaced_tags_are_matched_by_local_name() -> None:
    xml = """<c:cluster xmlns:c="urn:example" name="c" config_version="1"><c:clusternodes/>
<c:fencedevices>
  <c:fencedevice name="d" agent="fence_xvm"
     hash="md5"/>
</c:fencedevices></c:cluster>"""
    cl, issues = parse(xml.encode(), "cluster.conf")
    assert [(i.line, i.code) for i in issues] == [(4, Code.BAD_HASH)]
    assert cl is not None and cl.devices[0].line == 3


def test_source_lines_of_every_element() -> None:
    data = b"""<a
  x="1"><b y="2"/><b
  y="3"
/>
<c/></a>"""
    root = etree.fromstring(data)
    lines = SourceLines(data)
    found = [
        (el.tag, lines.start(el), lines.attr(el, "x"), lines.attr(el, "y")) for el in root.iter()
    ]
    assert found == [("a", 1, 2, 1), ("b", 2, 2, 2), ("b", 2, 2, 3), ("c", 5, 5, 5)]
    assert lines.scanned and lines.spanning == 2  # <a ...> and the second <b .../>


def test_a_file_without_multiline_tags_is_not_scanned() -> None:
    """The common case costs one regex search: each line is libxml2's sourceline."""
    data = MULTILINE_DEVICE.replace("\n                 ", " ").encode()
    root = etree.fromstring(data)
    lines = SourceLines(data)
    assert not lines.scanned and lines.spanning == 0
    device = next(root.iter("fencedevice"))
    line: object = device.sourceline
    assert lines.start(device) == lines.attr(device, "hash") == line == 7


@pytest.mark.parametrize(
    "first_line",
    [
        '<fencedevice name="a>b" agent="fence_xvm"',
        "<fencedevice name='a' agent=\"fence_xvm\" comment='1 > 0'",
        '<fencedevice name="a" agent="fence_xvm" comment="two\nlines"',
    ],
    ids=["gt-in-value", "gt-in-single-quotes", "newline-in-value"],
)
def test_a_tag_spanning_lines_is_found_whatever_its_values_hold(first_line: str) -> None:
    xml = (
        '<cluster name="c" config_version="1"><clusternodes/><fencedevices>\n'
        f'{first_line}\n   hash="md5"/>\n'
        "</fencedevices></cluster>"
    )
    cl, issues = parse(xml.encode(), "cluster.conf")
    hash_line = xml.splitlines().index('   hash="md5"/>') + 1
    assert [(i.line, i.code) for i in issues] == [(hash_line, Code.BAD_HASH)]
    assert cl is not None and cl.devices[0].line == 2
