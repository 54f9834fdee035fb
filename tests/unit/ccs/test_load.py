"""ccs.load end to end: every issue code from its fixture, valid fixtures, big files, key files."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

import ccs
from ccs import Code, Severity
from ccs.issues import DESCRIPTION, SEVERITY
from ccs.source import read_key
from tests.unit.ccs.cases import (
    CASES,
    CCS_DIR,
    KEYS_DIR,
    MULTI_DEFECT_FIXTURES,
    VALID_FIXTURES,
    Case,
    case_path,
    fake_resolver,
    line_of,
    load_args,
    stage_tree,
)

# --- one fixture per code --------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fixture_yields_its_code(case: Case, staged: Path, tmp_path: Path) -> None:
    path = case_path(case, staged, tmp_path)
    config, corosync = load_args(case, path, staged)
    result = ccs.load(str(config), case.explicit, fake_resolver, corosync)

    assert {i.code for i in result.issues} == {case.code} | case.also
    found = [i for i in result.issues if i.code is case.code]
    assert len(found) == 1, found
    issue = found[0]
    # Severity: by the fixture's name, not by re-reading the SEVERITY table.
    expect = Severity.WARNING if (case.fixture or "").startswith("warn-") else Severity.ERROR
    assert issue.severity is expect
    assert issue.file == str(path)
    assert issue.line == (0 if case.at is None else line_of(path, case.at))
    assert case.says in issue.message
    assert issue.render() == f"{path}:{issue.line}: {expect} {case.code}: {issue.message}"
    # A snapshot exists exactly when there is no error.
    assert (result.snapshot is None) == (expect is Severity.ERROR)
    if result.snapshot is not None:
        assert result.snapshot.issues == result.issues


def test_every_code_has_a_fixture_case_and_a_description() -> None:
    """Adding a Code without a fixture (and a row in CASES) fails here."""
    codes = [c.code for c in CASES]
    assert len(codes) == len(set(codes))
    assert set(codes) == set(Code)
    for code in Code:
        assert DESCRIPTION[code].strip(), code
        assert code in SEVERITY


def test_fixture_names_follow_code_and_severity() -> None:
    for case in CASES:
        if case.fixture is None:
            # Only what git cannot hold as a fixture: a missing file, or one made by the test.
            assert case.code is Code.CONFIG_UNREADABLE or case.make is not None
            continue
        prefix = "warn" if SEVERITY[case.code] is Severity.WARNING else "invalid"
        assert case.fixture == f"{prefix}-{case.code}.conf"
        assert (CCS_DIR / case.fixture).is_file()


def test_no_orphan_defect_fixtures() -> None:
    """Every invalid-*/warn-* file in fixtures/ccs is exercised by some test."""
    on_disk = {p.name for p in CCS_DIR.glob("*.conf") if p.name.startswith(("invalid-", "warn-"))}
    known = {c.fixture for c in CASES if c.fixture} | MULTI_DEFECT_FIXTURES
    assert on_disk == known


def test_every_fixture_has_a_comment_saying_what_it_shows() -> None:
    for path in CCS_DIR.glob("*.conf"):
        head = path.read_text()[:400]
        assert "<!--" in head or head.startswith("#"), path.name  # XML, or a corosync.conf


# --- valid fixtures --------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_valid_fixture_loads_from_the_checkout(name: str) -> None:
    """Straight from the repository: no errors whatever modes git gave the keys."""
    result = ccs.load(str(CCS_DIR / name))
    assert result.snapshot is not None, [i.render() for i in result.issues]
    assert all(i.severity is Severity.WARNING for i in result.issues)


@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_valid_fixture_issues_with_private_keys(name: str, staged: Path) -> None:
    result = ccs.load(str(staged / "ccs" / name))
    assert result.snapshot is not None
    expected = {Code.OLD_PORT} if name == "old-generation.conf" else set()
    assert {i.code for i in result.issues} == expected
    assert result.snapshot.cluster is result.cluster
    assert result.snapshot.plan is result.plan
    assert result.snapshot.version == result.snapshot.cluster.config_version


def test_key_fixtures_have_the_documented_contents() -> None:
    sizes = {p.name: p.stat().st_size for p in KEYS_DIR.glob("*.key")}
    assert sizes == {
        "host1.key": 4096,
        "host2.key": 4096,
        "host3.key": 4096,
        "host4.key": 4096,
        "host1-copy.key": 4096,
        "empty.key": 0,
        "long.key": 5000,
    }
    keys = {name: (KEYS_DIR / name).read_bytes() for name in sizes}
    assert keys["host1-copy.key"] == keys["host1.key"]
    distinct = [keys[f"host{n}.key"] for n in range(1, 5)] + [keys["long.key"]]
    assert len(set(distinct)) == 5


def test_relative_key_paths_follow_the_config_file_not_the_cwd(
    staged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = staged / "ccs" / "two-host.conf"
    result = ccs.load(str(path))
    assert result.snapshot is not None
    cluster = result.snapshot.cluster
    assert [cluster.key_path(d) for d in cluster.devices] == [
        str(staged / "keys" / "host1.key"),
        str(staged / "keys" / "host2.key"),
    ]
    assert [sd.key for sd in result.snapshot.plan.devices] == [
        (KEYS_DIR / "host1.key").read_bytes(),
        (KEYS_DIR / "host2.key").read_bytes(),
    ]


def test_moving_the_config_away_from_its_keys_loses_them(staged: Path, tmp_path: Path) -> None:
    """Relative key paths are not looked up next to the keys' old place: a lone copy of the
    file finds no key, so the host serves nothing."""
    (tmp_path / "etc").mkdir()
    lone = tmp_path / "etc" / "cluster.conf"
    shutil.copy(staged / "ccs" / "two-node.conf", lone)
    result = ccs.load(str(lone))
    assert [i.code for i in result.issues] == [Code.NO_DEVICE]
    assert result.plan is not None
    assert [n.reason for n in result.plan.not_served] == [
        f"key file {tmp_path / 'keys' / 'host1.key'}: missing"
    ]


# --- everything at once ----------------------------------------------------------------------


def test_several_defects_are_all_reported_in_file_order(staged: Path) -> None:
    path = staged / "ccs" / "invalid-several.conf"
    result = ccs.load(str(path))
    got = [(i.line, i.code) for i in result.issues]
    assert got == [
        (line_of(path, "<cluster "), Code.CLUSTER_NAME_LONG),
        (line_of(path, "<cman "), Code.TWO_NODE_VOTES),
        (line_of(path, 'domain="vm-other"'), Code.CONFLICTING_DOMAIN),
        (line_of(path, '<clusternode name="n2"'), Code.DUPLICATE_NODEID),
        (line_of(path, '"xvm-host3"'), Code.UNDEFINED_DEVICE),
        (line_of(path, 'hash="md5"'), Code.BAD_HASH),
        (line_of(path, "empty.key"), Code.UNUSED_DEVICE),
        (line_of(path, "empty.key"), Code.KEY_EMPTY),
    ]
    assert result.snapshot is None
    # Parsing still produced a cluster and a plan, so the operator also sees what would run.
    assert result.cluster is not None and result.plan is not None
    assert [sd.name for sd in result.plan.devices] == ["xvm-host1"]


def test_parse_and_validate_problems_come_together(staged: Path, tmp_path: Path) -> None:
    """A value error found by the parser does not hide the cross-checks of the validator."""
    key = staged / "keys" / "host1.key"
    conf = tmp_path / "cluster.conf"
    conf.write_text(
        f"""<cluster name="c" config_version="x">
  <clusternodes>
    <clusternode name="a" nodeid="1"/>
  </clusternodes>
  <fencedevices>
    <fencedevice name="d" agent="fence_xvm" key_file="{key}" hash="md4"/>
  </fencedevices>
</cluster>
"""
    )
    result = ccs.load(str(conf))
    # No config_version: the file is unusable, so only the parser's findings are reported.
    assert [(i.line, i.code) for i in result.issues] == [(1, Code.BAD_NUMBER), (6, Code.BAD_HASH)]
    assert result.cluster is None

    conf.write_text(conf.read_text().replace('config_version="x"', 'config_version="2"'))
    result = ccs.load(str(conf))
    assert [(i.line, i.code) for i in result.issues] == [
        (3, Code.NODE_NOT_FENCED),
        (6, Code.BAD_HASH),
        (6, Code.UNUSED_DEVICE),
    ]


# --- the file itself -------------------------------------------------------------------------


def test_directory_as_config_is_unreadable(tmp_path: Path) -> None:
    result = ccs.load(str(tmp_path))
    assert [i.code for i in result.issues] == [Code.CONFIG_UNREADABLE]
    assert result.unreadable == f"{tmp_path}: is a directory, not a regular file"
    assert result.issues[0].line == 0 and result.issues[0].file == str(tmp_path)
    assert result.snapshot is None and result.cluster is None and result.plan is None


def test_empty_config_is_an_xml_error(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    conf.write_bytes(b"")
    result = ccs.load(str(conf))
    assert [i.code for i in result.issues] == [Code.XML_SYNTAX]
    assert result.unreadable is None


# --- key files in states git cannot ship -----------------------------------------------------


def test_key_directory_made_in_tmp_is_unreadable(staged: Path, tmp_path: Path) -> None:
    (tmp_path / "keydir").mkdir()
    conf = tmp_path / "cluster.conf"
    text = (staged / "ccs" / "invalid-key-unreadable.conf").read_text()
    text = text.replace('key_file="../keys"', f'key_file="{tmp_path / "keydir"}"')
    text = text.replace("../keys/host1.key", str(staged / "keys" / "host1.key"))
    conf.write_text(text)
    result = ccs.load(str(conf))
    assert [i.code for i in result.issues] == [Code.KEY_UNREADABLE]
    assert result.plan is not None
    assert [(n.device, n.reason) for n in result.plan.not_served] == [
        ("xvm-host2", f"key file {tmp_path / 'keydir'}: not a regular file")
    ]


@pytest.mark.parametrize(
    ("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True), (0o604, True)]
)
def test_key_permissions_warn_for_group_or_other_access(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    stage_tree(tmp_path, {"host3.key": mode})
    path = tmp_path / "ccs" / "warn-key-permissions.conf"
    result = ccs.load(str(path))
    assert result.snapshot is not None
    codes = [i.code for i in result.issues]
    assert codes == ([Code.KEY_PERMISSIONS] if warned else [])
    if warned:
        assert f"mode {mode:04o}" in result.issues[0].message


def test_key_permissions_are_also_checked_for_a_too_long_key(tmp_path: Path) -> None:
    stage_tree(tmp_path, {"long.key": 0o666})
    result = ccs.load(str(tmp_path / "ccs" / "warn-key-too-long.conf"))
    assert sorted(i.code for i in result.issues) == [Code.KEY_PERMISSIONS, Code.KEY_TOO_LONG]
    assert result.snapshot is not None
    assert len(result.snapshot.plan.devices[0].key) == 4096
    assert result.snapshot.plan.devices[0].key == (KEYS_DIR / "long.key").read_bytes()[:4096]


def test_key_file_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def read() -> None:
        read_key(str(fifo))
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    finished = done.wait(0.5)
    if not finished:
        # Unblock the reader (it then sees EOF) so no thread is left behind.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5)
    assert finished, "read_key blocked on a FIFO"


# --- size ------------------------------------------------------------------------------------


def _big_conf(nodes: int, hosts: int) -> str:
    keys = [KEYS_DIR / f"host{h}.key" for h in range(1, hosts + 1)]
    out = ['<?xml version="1.0"?>', '<cluster name="big" config_version="1000">', "<clusternodes>"]
    for n in range(1, nodes + 1):
        host = (n - 1) % hosts + 1
        alt = f'<altname name="node{n:04d}-r1"/>' if n % 10 == 0 else ""
        out.append(
            f'<clusternode name="node{n:04d}" nodeid="{n}">{alt}<fence><method name="1">'
            f'<device name="xvm-host{host}" port="guest-{n:04d}"/></method></fence>'
            "</clusternode>"
        )
    out.append("</clusternodes><fencedevices>")
    for h, key in enumerate(keys, 1):
        out.append(f'<fencedevice name="xvm-host{h}" agent="fence_xvm" key_file="{key}"/>')
    out.append("</fencedevices></cluster>")
    return "\n".join(out) + "\n"


def test_thousand_node_cluster_parses_and_validates(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for h in range(1, 5):
        shutil.copy(KEYS_DIR / f"host{h}.key", keys / f"host{h}.key")
        (keys / f"host{h}.key").chmod(0o600)
    conf = tmp_path / "cluster.conf"
    conf.write_text(_big_conf(1000, 4).replace(str(KEYS_DIR), str(keys)))

    result = ccs.load(str(conf))

    assert result.issues == ()
    assert result.snapshot is not None
    cluster, plan = result.snapshot.cluster, result.snapshot.plan
    assert len(cluster.nodes) == 1000
    assert len({n.nodeid for n in cluster.nodes}) == 1000
    assert sum(len(n.altnames) for n in cluster.nodes) == 100
    assert [sd.name for sd in plan.devices] == [f"xvm-host{h}" for h in range(1, 5)]
    assert [len(sd.nodes) for sd in plan.devices] == [250] * 4
    targets = {t.node: t.domain for sd in plan.devices for t in sd.nodes}
    assert len(targets) == 1000
    assert targets["node0777"] == "guest-0777"
    node777 = next(t for t in plan.devices[0].nodes if t.node == "node0777")
    assert node777.line == line_of(conf, 'name="node0777"')


def test_thousand_node_cluster_reports_a_late_duplicate(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    text = _big_conf(1000, 1).replace('port="guest-0999"', 'port="guest-0003"')
    conf.write_text(text)
    result = ccs.load(str(conf))
    dup = [i for i in result.issues if i.code is Code.DUPLICATE_DOMAIN]
    assert len(dup) == 1
    assert dup[0].line == line_of(conf, 'name="node0999"')
    assert "'node0003' and 'node0999'" in dup[0].message


def test_contrib_example_cluster_conf_is_valid_once_its_keys_exist(tmp_path: Path) -> None:
    example = (CCS_DIR.parents[1] / "contrib" / "examples" / "cluster.conf").read_text()
    for host in ("host1", "host2"):
        key = tmp_path / f"{host}.key"
        key.write_bytes(os.urandom(4096))
        key.chmod(0o600)
        example = example.replace(f"/etc/cluster/{host}.key", str(key))
    conf = tmp_path / "cluster.conf"
    conf.write_text(example)
    result = ccs.load(str(conf), None, fake_resolver)
    assert result.issues == ()
    assert result.snapshot is not None
    served = {d.name: [(t.node, t.domain) for t in d.nodes] for d in result.snapshot.plan.devices}
    assert served == {
        "xvm-host1": [("node1", "vm-01"), ("node2", "vm-02")],
        "xvm-host2": [("node3", "vm-03"), ("node4", "vm-04")],
    }
