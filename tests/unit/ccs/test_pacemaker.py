"""A Pacemaker guest cluster (corosync.conf + a CIB export) read as the same snapshot as a
cluster.conf: nodes, requester addresses, devices with their keys, node -> VM per device."""

from __future__ import annotations

from pathlib import Path

import pytest

import ccs
from ccs import Code
from ccs.cib import host_map
from ccs.corosync_conf import parse_corosync
from ccs.reload import Verdict, decide
from tests.unit.ccs.cases import fake_resolver, line_of

CIB = "pacemaker-cib.xml"


def _load(staged: Path, cib: str = CIB, corosync: str | None = None) -> ccs.LoadResult:
    return ccs.load(str(staged / "ccs" / cib), None, fake_resolver, corosync)


@pytest.mark.parametrize(
    ("text", "pairs", "bad"),
    [
        ("n1:vm1;n2:vm2", [("n1", "vm1"), ("n2", "vm2")], ""),
        ("n1=vm1 n2:vm2\tn3:vm3;", [("n1", "vm1"), ("n2", "vm2"), ("n3", "vm3")], ""),
        ("n1:vm1,vm1b;n2:vm2", [("n1", "vm1"), ("n1", "vm1b"), ("n2", "vm2")], ""),
        (r"n1:my\ vm;n2:a\,b", [("n1", "my vm"), ("n2", "a,b")], ""),
        ("n1:vm1;spare;:x;n2:", [("n1", "vm1")], "'spare', ':x', 'n2:'"),
        ("", [], ""),
    ],
)
def test_host_map_reads_as_pacemaker_does(
    text: str, pairs: list[tuple[str, str]], bad: str
) -> None:
    assert host_map(text) == (pairs, bad)


def test_corosync_conf_nodes_names_and_rings() -> None:
    text = b"""totem {
    cluster_name: g
}
nodelist {
    node {
        ring0_addr: 10.0.0.1
        ring1_addr: 10.1.0.1
        name: a
        nodeid: 1
    }
    node {
        ring0_addr: b.example
        nodeid: 2
    }
}
"""
    conf, issues = parse_corosync(text, "c.conf")
    assert issues == []
    assert conf is not None and conf.cluster_name == "g"
    assert [(n.name, n.nodeid, n.addresses, n.line) for n in conf.nodes] == [
        ("a", 1, ("10.0.0.1", "10.1.0.1"), 5),
        ("b.example", 2, ("b.example",), 11),  # named by its ring0_addr, as Pacemaker does
    ]


@pytest.mark.parametrize(
    ("text", "code", "line"),
    [
        (b"totem {\n cluster_name: g\n}\nnodelist {\n node {\n  ring0_addr: x\n }\n}\n",
         Code.MISSING_ATTRIBUTE, 5),
        (b"totem {\n cluster_name: g\n}\nnodelist {\n node {\n  nodeid: zero\n"
         b"  ring0_addr: x\n }\n}\n", Code.BAD_NUMBER, 6),
        (b"totem {\n cluster_name: g\n}\n}\nnodelist {\n}\n", Code.CONF_SYNTAX, 4),
        (b"totem {\n cluster_name: g\n}\nnodelist {\n}\nlogging {\n to_syslog: yes\n",
         Code.CONF_SYNTAX, 6),
        (b"totem {\n cluster_name: g\n}\n", Code.MISSING_ELEMENT, 0),
        (b"nodelist {\n}\n", Code.MISSING_ATTRIBUTE, 0),
    ],
)  # fmt: skip
def test_corosync_conf_problems_name_their_line(text: bytes, code: Code, line: int) -> None:
    _, issues = parse_corosync(text, "c.conf")
    assert [(i.code, i.line) for i in issues] == [(code, line)]


def test_a_cib_export_gives_the_same_kind_of_snapshot(staged: Path) -> None:
    result = _load(staged)
    snap = result.snapshot
    assert snap is not None, [i.render() for i in result.issues]
    cluster = snap.cluster
    assert (cluster.kind, cluster.name, snap.version) == ("pacemaker", "guests", 12)
    assert cluster.sources == (str(staged / "ccs" / "corosync.conf"),)
    served = {d.name: {t.node: (t.domain, t.names) for t in d.nodes} for d in snap.plan.devices}
    assert served == {
        "xvm-host1": {"n1": ("vm-n1", ("n1", "192.0.2.11")),
                      "n2": ("vm-n2", ("n2", "192.0.2.12", "198.51.100.12"))},
        "xvm-host2": {"n3": ("vm-n3", ("n3",))},
    }  # fmt: skip
    assert snap.plan.requesters is not None
    assert set(snap.plan.requesters.values()) == {"n1", "n2", "n3"}


def test_issues_point_at_the_file_they_are_about(staged: Path, tmp_path: Path) -> None:
    coro = (staged / "ccs" / "corosync.conf").read_text()
    bad = tmp_path / "corosync.conf"
    bad.write_text(coro.replace("        nodeid: 2\n", "        nodeid: 1\n"))
    result = _load(staged, corosync=str(bad))
    found = {(i.code, i.file, i.line) for i in result.issues}
    assert (Code.DUPLICATE_NODEID, str(bad), line_of(bad, "ring1_addr") - 2) in found


def test_a_device_without_map_or_list_fences_every_node_as_its_own_vm(
    staged: Path, tmp_path: Path
) -> None:
    text = (staged / "ccs" / CIB).read_text()
    start = text.index('<nvpair id="xvm-host1-instance_attributes-pcmk_host_map"')
    end = text.index("\n", start)
    cib = tmp_path / "cib.xml"
    cib.write_text((text[:start] + text[end:]).replace("../keys/", f"{staged / 'keys'}/"))
    result = ccs.load(str(cib), ["xvm-host1"], None, str(staged / "ccs" / "corosync.conf"))
    assert result.snapshot is not None, [i.render() for i in result.issues]
    (dev,) = result.snapshot.plan.devices
    assert {t.node: t.domain for t in dev.nodes} == {"n1": "n1", "n2": "n2", "n3": "n3"}


def test_a_missing_corosync_conf_is_named(staged: Path, tmp_path: Path) -> None:
    result = _load(staged, corosync=str(tmp_path / "nope.conf"))
    assert result.snapshot is None
    (issue,) = result.issues
    assert issue.code is Code.CONFIG_UNREADABLE
    assert issue.file == str(tmp_path / "nope.conf") and "corosync.conf" in issue.message


def test_reload_follows_the_cib_epoch(staged: Path, tmp_path: Path) -> None:
    cib, coro = tmp_path / "cib.xml", tmp_path / "corosync.conf"
    text = (staged / "ccs" / CIB).read_text().replace("../keys/", f"{staged / 'keys'}/")
    cib.write_text(text)
    coro.write_text((staged / "ccs" / "corosync.conf").read_text())
    first = ccs.load(str(cib), None, fake_resolver).snapshot
    assert first is not None
    coro.write_text(coro.read_text().replace("name: n1", "name: n1\n        ring1_addr: x1"))
    same_epoch = decide(first, ccs.load(str(cib), None, fake_resolver))
    assert same_epoch.verdict is Verdict.NOT_BUMPED  # corosync.conf alone: waits for the CIB
    cib.write_text(text.replace('epoch="12"', 'epoch="13"'))
    bumped = decide(first, ccs.load(str(cib), None, fake_resolver))
    assert bumped.verdict is Verdict.EDIT and bumped.snapshot is not None
    (n1,) = [n for n in bumped.snapshot.cluster.nodes if n.name == "n1"]
    assert "x1" in n1.names


def test_check_config_says_which_source_it_read(
    staged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xvmd.cli import check_config

    cib = staged / "ccs" / CIB
    assert check_config.main(["--no-resolve", "-f", str(cib)]) == 0
    out = capsys.readouterr().out
    coro = staged / "ccs" / "corosync.conf"
    assert f"Pacemaker cluster 'guests': CIB export {cib} (epoch 12), nodes from {coro}" in out
    assert "n3 -> domain vm-n3" in out
