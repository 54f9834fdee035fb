"""The bounds of ccs: numbers of any length, files that are not regular or too big, too many
nodes, and memory at the node limit. Real files, FIFOs and device links; no mocks."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import TypeVar

import pytest

import ccs
from ccs import Code
from ccs.limits import MAX_CONFIG_BYTES, MAX_NODES, MAX_NUMBER
from ccs.parse import parse, whole_number
from ccs.source import SourceError, read_config, read_key
from ccs.validate import KeyProblem
from tests.support.promptly import promptly
from tests.unit.ccs.cases import REPO, line_of, nodes_conf
from xvmd.cli import check_config

T = TypeVar("T")
HUGE = "9" * 5000  # int() of this many digits raises ValueError (max_str_digits)


def _parse(xml: str) -> tuple[ccs.Cluster | None, list[ccs.Issue]]:
    return parse(xml.encode(), "cluster.conf")


def _codes(xml: str) -> list[Code]:
    return [i.code for i in _parse(xml)[1]]


# --- numbers ---------------------------------------------------------------------------------


def _node_xml(attrs: str, cluster_attrs: str = 'config_version="1"') -> str:
    return (
        f'<cluster name="c" {cluster_attrs}><clusternodes>'
        f'<clusternode name="a" {attrs}/></clusternodes></cluster>'
    )


@pytest.mark.parametrize(
    "xml",
    [
        _node_xml(f'nodeid="{HUGE}"'),
        _node_xml('nodeid="1"', f'config_version="{HUGE}"'),
        _node_xml(f'nodeid="1" votes="{HUGE}"'),
        f'<cluster name="c" config_version="1"><cman expected_votes="{HUGE}"/><clusternodes>'
        '<clusternode name="a" nodeid="1"/></clusternodes></cluster>',
    ],
    ids=["nodeid", "config_version", "votes", "expected_votes"],
)
def test_five_thousand_digits_are_a_bad_number(xml: str) -> None:
    issues = _parse(xml)[1]
    assert [i.code for i in issues] == [Code.BAD_NUMBER]
    # The message names the value but does not carry all of it.
    assert len(issues[0].message) < 200 and "(5000 characters)" in issues[0].message


@pytest.mark.parametrize(
    "xml",
    [
        '<cluster name="c" config_version="1"><clusternodes/><fencedevices><fencedevice '
        f'name="d" agent="fence_xvm" ipport="{HUGE}"/></fencedevices></cluster>',
        f'<cluster name="c" config_version="1"><clusternodes/><fence_xvmd port="{HUGE}"/>'
        "</cluster>",
        '<cluster name="c" config_version="1"><clusternodes><clusternode name="a" nodeid="1">'
        f'<fence><method name="1"><device name="d" ipport="{HUGE}"/></method></fence>'
        "</clusternode></clusternodes></cluster>",
    ],
    ids=["fencedevice", "fence_xvmd", "device"],
)
def test_five_thousand_digit_port_is_a_bad_port(xml: str) -> None:
    assert _codes(xml) == [Code.BAD_PORT]


def test_five_thousand_digit_debug_level_is_a_bad_number() -> None:
    xml = (
        '<cluster name="c" config_version="1"><clusternodes/><fencedevices><fencedevice '
        f'name="d" agent="fence_xvm" debug="{HUGE}"/></fencedevices></cluster>'
    )
    assert _codes(xml) == [Code.BAD_NUMBER]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("+7", 7),
        (" 42 ", 42),
        (str(MAX_NUMBER), MAX_NUMBER),
        ("0" * 5000 + "1", 1),  # leading zeros are not digits that count
        (str(MAX_NUMBER + 1), None),
        ("99999999999", None),
        (HUGE, None),
        ("+" + HUGE, None),
        ("1_0", None),
        ("١٢", None),
        ("-1", None),
        ("", None),
    ],
)
def test_whole_number_is_bounded_and_ascii(text: str, value: int | None) -> None:
    assert whole_number(text) == value


def test_largest_number_is_accepted_one_more_is_not() -> None:
    ok = _node_xml(f'nodeid="{MAX_NUMBER}"')
    assert _codes(ok) == []
    issues = _parse(_node_xml(f'nodeid="{MAX_NUMBER + 1}"'))[1]
    assert [i.code for i in issues] == [Code.BAD_NUMBER]
    assert f"1..{MAX_NUMBER}" in issues[0].message


def test_five_thousand_digit_nodeid_through_load(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    conf.write_text(nodes_conf(3).replace('nodeid="2"', f'nodeid="{HUGE}"'))
    result = ccs.load(str(conf))
    assert Code.BAD_NUMBER in {i.code for i in result.issues}
    bad = next(i for i in result.issues if i.code is Code.BAD_NUMBER)
    assert bad.line == line_of(conf, 'name="node0002"')


# --- what cluster.conf is --------------------------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "cluster.conf"
    os.mkfifo(fifo)
    with pytest.raises(SourceError) as exc:
        promptly(lambda: read_config(str(fifo)), unblock=fifo)
    assert str(exc.value) == f"{fifo}: is a FIFO, not a regular file"
    assert exc.value.code is Code.CONFIG_UNREADABLE
    result = promptly(lambda: ccs.load(str(fifo)), unblock=fifo)
    assert [(i.code, i.line) for i in result.issues] == [(Code.CONFIG_UNREADABLE, 0)]
    assert result.unreadable == f"{fifo}: is a FIFO, not a regular file"


def test_symlink_to_dev_zero_is_refused_unread(tmp_path: Path) -> None:
    link = tmp_path / "cluster.conf"
    os.symlink("/dev/zero", link)
    result = promptly(lambda: ccs.load(str(link)))
    assert [i.code for i in result.issues] == [Code.CONFIG_UNREADABLE]
    assert result.unreadable == f"{link}: is a character device, not a regular file"
    assert result.snapshot is None and result.cluster is None


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a directory, not a regular file") as exc:
        read_config(str(tmp_path))
    assert exc.value.code is Code.CONFIG_UNREADABLE


def test_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.conf"
    real.write_text(nodes_conf(2))
    link = tmp_path / "cluster.conf"
    os.symlink(real, link)
    assert read_config(str(link)) == real.read_bytes()


def test_file_over_the_limit_is_not_read(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    with conf.open("wb") as fh:
        fh.truncate(MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    result = ccs.load(str(conf))
    assert [(i.code, i.line) for i in result.issues] == [(Code.CONFIG_TOO_LARGE, 0)]
    assert result.unreadable == (
        f"{conf}: is {MAX_CONFIG_BYTES + 1} bytes, more than the {MAX_CONFIG_BYTES} allowed"
    )


def test_file_at_the_limit_is_read(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    text = nodes_conf(2)
    conf.write_text(text + " " * (MAX_CONFIG_BYTES - len(text)))
    assert len(read_config(str(conf))) == MAX_CONFIG_BYTES
    result = ccs.load(str(conf))
    assert Code.CONFIG_TOO_LARGE not in {i.code for i in result.issues}
    assert result.cluster is not None


def test_a_smaller_limit_applies_to_the_bytes_read(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    conf.write_bytes(b"x" * 100)
    assert read_config(str(conf), limit=100) == b"x" * 100
    with pytest.raises(SourceError) as exc:
        read_config(str(conf), limit=99)
    assert exc.value.code is Code.CONFIG_TOO_LARGE


def test_bytes_over_the_limit_are_refused_by_parse_too() -> None:
    """load_bytes callers (the bytes did not come from read_config) get the same bound."""
    cl, issues = parse(b" " * (MAX_CONFIG_BYTES + 1), "cluster.conf")
    assert cl is None
    assert [i.code for i in issues] == [Code.CONFIG_TOO_LARGE]


def test_key_file_linked_to_dev_zero_is_not_read(tmp_path: Path) -> None:
    link = tmp_path / "host.key"
    os.symlink("/dev/zero", link)
    state = promptly(lambda: read_key(str(link)))
    assert (state.data, state.problem) == (None, KeyProblem.NOT_REGULAR)
    assert state.reason == "not a regular file"


def test_key_file_reads_a_bounded_amount(tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    with key.open("wb") as fh:
        fh.truncate(MAX_CONFIG_BYTES)
    state = read_key(str(key))
    assert state.data is not None and len(state.data) == 4097
    assert state.size == MAX_CONFIG_BYTES


# --- node count ------------------------------------------------------------------------------


def test_nodes_up_to_the_limit_are_read() -> None:
    cl, issues = _parse(nodes_conf(MAX_NODES))
    assert issues == [] and cl is not None and len(cl.nodes) == MAX_NODES


def test_one_node_over_the_limit_refuses_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    # Every node is broken, so any node that were walked would add an issue.
    conf.write_text(nodes_conf(MAX_NODES + 1).replace('nodeid="', 'nodeid="x'))
    result = ccs.load(str(conf))
    assert [i.code for i in result.issues] == [Code.TOO_MANY_NODES]
    assert result.issues[0].line == line_of(conf, f'name="node{MAX_NODES + 1:04d}"')
    assert result.cluster is None and result.snapshot is None


def test_many_more_nodes_are_refused_the_same_way() -> None:
    xml = nodes_conf(5 * MAX_NODES)
    cl, issues = _parse(xml)
    assert cl is None and [i.code for i in issues] == [Code.TOO_MANY_NODES]


def test_memory_at_the_node_limit_is_bounded(tmp_path: Path) -> None:
    """Loading 1024 nodes peaked at ~1.3 MB of Python allocations when measured;
    the bound is three times that (libxml2's own tree is not counted by tracemalloc)."""
    key = tmp_path / "host.key"
    key.write_bytes(os.urandom(4096))
    key.chmod(0o600)
    conf = tmp_path / "cluster.conf"
    conf.write_text(nodes_conf(MAX_NODES, key))
    tracemalloc.start()
    try:
        result = ccs.load(str(conf))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.snapshot is not None
    assert len(result.snapshot.plan.devices[0].nodes) == MAX_NODES
    assert peak < 4_000_000, peak


# --- xvmd check-config -----------------------------------------------------------------------


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """The real command; a hang fails the test through the timeout."""
    return subprocess.run(
        [sys.executable, "-m", "xvmd", "check-config", "--no-resolve", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )


def _assert_reported(proc: subprocess.CompletedProcess[str], rc: int, line: str) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert proc.returncode == rc
    assert proc.stdout.splitlines()[0] == line


def test_check_config_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "cluster.conf"
    os.mkfifo(fifo)
    proc = _check_config(fifo)
    _assert_reported(
        proc, 2, f"{fifo}:0: error config-unreadable: {fifo}: is a FIFO, not a regular file"
    )


def test_check_config_on_a_link_to_dev_zero(tmp_path: Path) -> None:
    link = tmp_path / "cluster.conf"
    os.symlink("/dev/zero", link)
    proc = _check_config(link)
    why = f"{link}: is a character device, not a regular file"
    _assert_reported(proc, 2, f"{link}:0: error config-unreadable: {why}")


def test_check_config_on_a_five_thousand_digit_nodeid(tmp_path: Path) -> None:
    conf = tmp_path / "cluster.conf"
    conf.write_text(nodes_conf(2).replace('nodeid="2"', f'nodeid="{HUGE}"'))
    proc = _check_config(conf)
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stderr == ""
    assert proc.returncode == 1
    line = line_of(conf, 'name="node0002"')
    assert f"{conf}:{line}: error bad-number: <clusternode> nodeid=" in proc.stdout


def _codes_printed(out: str) -> list[str]:
    return [ln.split()[2].rstrip(":") for ln in out.splitlines() if ": error " in ln]


def test_check_config_on_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config.main(["-f", str(tmp_path)]) == 2
    assert _codes_printed(capsys.readouterr().out) == ["config-unreadable"]


def test_check_config_on_a_too_large_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "cluster.conf"
    with conf.open("wb") as fh:
        fh.truncate(MAX_CONFIG_BYTES + 1)
    assert check_config.main(["-f", str(conf)]) == 2
    out = capsys.readouterr().out
    assert _codes_printed(out) == ["config-too-large"]
    assert out.endswith(
        f"{conf}: cannot check: {conf}: is {MAX_CONFIG_BYTES + 1} bytes, more than the "
        f"{MAX_CONFIG_BYTES} allowed\n"
    )


def test_check_config_on_too_many_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "cluster.conf"
    conf.write_text(nodes_conf(MAX_NODES + 1))
    assert check_config.main(["-f", str(conf)]) == 1
    out = capsys.readouterr().out
    assert _codes_printed(out) == ["too-many-nodes"]
    assert out.endswith(f"{conf}: INVALID: 1 error, 0 warnings\n")


def test_check_config_reports_an_internal_error_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug anywhere in a load is one line and exit 1, not a traceback."""
    conf = tmp_path / "cluster.conf"
    conf.write_text(nodes_conf(2))

    def broken(names: object) -> dict[str, tuple[str, ...]]:
        raise RuntimeError("resolver exploded")

    monkeypatch.setattr(ccs.source, "resolve", broken)
    assert check_config.main(["-f", str(conf)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"xvmd check-config: {conf}: internal error while checking: "
        "RuntimeError: resolver exploded\n"
    )
