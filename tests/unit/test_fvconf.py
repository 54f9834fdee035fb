"""fence_virt.conf import: parsing, conversion, and what is not carried over."""

from __future__ import annotations

import pytest

from tests.support.harness import FIXTURES
from xvmd import cli
from xvmd.cli.fvconf import FvConfError, convert, parse

FV = FIXTURES / "fence_virt"


def migrate(name: str) -> tuple[list[str], list[str], list[str]]:
    m = convert(parse((FV / name).read_text()))
    return m.options, m.notes, m.dropped


def test_debian_default_config() -> None:
    options, notes, dropped = migrate("debian-default.conf")
    assert options == [
        "--local",
        "--no-ccs",
        "-k",
        "/etc/fence_virt.key",
        "-I",
        "virbr0",
        "-a",
        "225.0.0.12",
        "-U",
        "qemu:///system",
    ]
    assert dropped == []
    assert any("quorum" in n for n in notes)


def test_every_multicast_setting_and_extra_uris() -> None:
    options, notes, dropped = migrate("full-multicast.conf")
    assert options == [
        "--local",
        "--no-ccs",
        "-k",
        "/etc/cluster/fence_xvm.key",
        "-I",
        "br0",
        "-a",
        "ff05::3:1",
        "-p",
        "1230",
        "-i",
        "ipv6",
        "--hash",
        "sha512",
        "--auth",
        "sha256",
        "-U",
        "qemu:///system",
        "-d",
    ]
    assert any("xen:///system" in d for d in dropped)
    assert any(n.startswith("module_path") for n in notes)
    assert any(n.startswith("wait_for_init") for n in notes)


def test_tcp_listener_keeps_fence_virtds_auth_quirk() -> None:
    options, notes, _ = migrate("tcp-listener.conf")
    assert "--tcp" in options and options[options.index("--tcp") + 1] == "[::1]:1229"
    # auth="none" acted as the hash minimum in fence_virtd; auth itself stayed sha256.
    assert options[options.index("--hash") + 1] == "none"
    assert "--auth" not in options
    assert any("known bug" in n for n in notes)


def test_cpg_backend_and_groups_are_named_as_not_carried_over() -> None:
    options, _, dropped = migrate("cpg-groups.conf")
    assert "-U" in options
    text = "\n".join(dropped)
    assert 'backend "cpg"' in text and "quorate" in text
    assert "group cluster1" in text and "192.0.2.11" in text and "cluster.conf" in text
    assert "name_mode" in text


def test_serial_listener_is_not_supported() -> None:
    _, _, dropped = migrate("serial.conf")
    assert any('listener "serial"' in d for d in dropped)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("fence_virtd {\n\tlistener = multicast;\n}\n", 2),
        ('fence_virtd {\n listener = "x"\n}\n', 2),
        ("a {\n b {\n", 2),
        ("}\n", 1),
        ('x = "unterminated;\n', 1),
    ],
)
def test_syntax_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(FvConfError, match=f"line {line}"):
        parse(text)


def test_comments_repeats_and_one_line_blocks() -> None:
    root = parse('# c\na { k = "1"; k = "2"; b { x = "y"; } }  # tail\n')
    a = root.block("a")
    assert a is not None and a.all("k") == ["1", "2"] and a.get("k") == "1"
    assert a.block("b") is not None


def test_command_prints_options_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["import-fence-virt-conf", str(FV / "cpg-groups.conf")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith("xvmd --local --no-ccs -k /etc/fence_virt.key")
    assert "XVMD_OPTS=" in out and "# Not carried over:" in out
    assert cli.main(["import-fence-virt-conf", str(FV / "broken.conf")]) == 2
    assert "broken.conf: line 2" in capsys.readouterr().err
    assert cli.main(["import-fence-virt-conf", str(FV / "absent.conf")]) == 2
