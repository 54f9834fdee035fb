"""Command-line errors: usage errors exit 2, a key file that cannot work exits 1."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from xvmd import cli
from xvmd.keys import KeyFileError, load_key
from xvmd.policy import Policy
from xvmd.protocol.wire import HashType
from xvmd.settings import (
    DEFAULT_IPV4_GROUP,
    DEFAULT_IPV6_GROUP,
    DEFAULT_TCP_ADDRESS,
    Settings,
    SettingsError,
    parse_tcp,
)

LOCAL = ["--local", "--no-ccs"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.run configures the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("pyroute2", "asyncio")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


@pytest.fixture
def no_serve(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, list[object]]]:
    """Replace the daemon start so a test that gets past validation cannot open sockets."""
    calls: list[tuple[Settings, list[object]]] = []

    def fake_serve(settings: Settings, policy: Policy, snapshot: object) -> int:
        calls.append((settings, list(policy.keys)))
        return 0

    monkeypatch.setattr(cli, "_serve", fake_serve)
    return calls


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.run(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    return err


# -- usage errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["-p", "0"], "0"),
        (["-p", "70000"], "70000"),
        (["-p", "-1"], "-1"),
        (["-p", "abc"], "abc"),
        (["--hash", "md5"], "md5"),
        (["--auth", "md5"], "md5"),
        (["-i", "ipv5"], "ipv5"),
        (["-a", "10.0.0.1"], "10.0.0.1"),
        (["-a", "not-an-ip"], "not-an-ip"),
        (["-i", "ipv6", "-a", "225.0.0.12"], "225.0.0.12"),
        (["-i", "ipv4", "-a", "ff05::3:1"], "ff05::3:1"),
        (["--tcp", "[::1"], "]"),
        (["--tcp", "localhost"], "localhost"),
        (["--tcp", ":0"], "0"),
        (["--tcp", ":99999"], "99999"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str],
    mentions: str,
    capsys: pytest.CaptureFixture[str],
    no_serve: list[tuple[Settings, list[object]]],
) -> None:
    err = usage_error([*LOCAL, *argv], capsys)
    assert mentions in err
    assert no_serve == []


def test_cluster_conf_options_need_ccs(
    capsys: pytest.CaptureFixture[str], no_serve: list[tuple[Settings, list[object]]]
) -> None:
    for argv in ([*LOCAL, "-f", "x.conf"], [*LOCAL, "-D", "xvm"]):
        err = usage_error(argv, capsys)
        assert "cannot be combined with --no-ccs" in err
    assert no_serve == []


def test_valid_arguments_reach_the_daemon(
    tmp_path: Path, no_serve: list[tuple[Settings, list[object]]]
) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"secret\n")
    key.chmod(0o600)
    argv = [*LOCAL, "-k", str(key), "-p", "0x4cd", "-i", "ipv4", "--tcp", "[::1]:1300"]
    assert cli.run(argv) == 0
    [(settings, keys)] = no_serve
    assert settings.port == 1229
    assert settings.family == "ipv4"
    assert settings.tcp == ("::1", 1300)
    assert settings.hash is HashType.SHA256 and settings.auth is HashType.SHA256
    assert len(keys) == 1


def test_no_key_needed_without_hash_and_auth(
    tmp_path: Path, no_serve: list[tuple[Settings, list[object]]]
) -> None:
    argv = [*LOCAL, "-k", str(tmp_path / "absent"), "--hash", "none", "--auth", "none"]
    assert cli.run(argv) == 0
    [(settings, keys)] = no_serve
    assert keys == []
    assert not settings.needs_key


# -- key file errors -------------------------------------------------------------------------------


def key_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.run([*LOCAL, "-k", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err
    return err


def test_missing_key_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_serve: list[tuple[Settings, list[object]]],
) -> None:
    err = key_error(tmp_path / "no-such.key", capsys)
    assert "does not exist" in err
    assert no_serve == []


def test_empty_key_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_serve: list[tuple[Settings, list[object]]],
) -> None:
    path = tmp_path / "empty.key"
    path.write_bytes(b"")
    err = key_error(path, capsys)
    assert "empty" in err
    assert no_serve == []


def test_key_file_is_a_directory(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_serve: list[tuple[Settings, list[object]]],
) -> None:
    err = key_error(tmp_path, capsys)
    assert "directory" in err
    assert no_serve == []


def test_main_returns_the_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*LOCAL, "-k", str(tmp_path / "absent")]) == 1
    assert str(tmp_path / "absent") in capsys.readouterr().err


# -- load_key directly -----------------------------------------------------------------------------


def test_load_key_reads_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"abc\n")
    path.chmod(0o600)
    key, warnings = load_key(str(path))
    assert key.data == b"abc\n"  # the newline is part of the key, as for fence_xvm
    assert warnings == []


def test_load_key_truncates_and_warns(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"x" * 5000)
    path.chmod(0o600)
    key, warnings = load_key(str(path))
    assert key.data == b"x" * 4096
    assert any("4096" in w for w in warnings)


def test_load_key_warns_about_permissions(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"abc")
    path.chmod(0o644)
    _key, warnings = load_key(str(path))
    assert any("chmod 600" in w and str(path) in w for w in warnings)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_load_key_rejects_non_regular_file() -> None:
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key("/dev/null")


# -- parse_tcp and listeners -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (DEFAULT_TCP_ADDRESS, 1229)),
        (":1230", (DEFAULT_TCP_ADDRESS, 1230)),
        ("10.0.0.1", ("10.0.0.1", 1229)),
        ("10.0.0.1:1230", ("10.0.0.1", 1230)),
        ("[::1]:1230", ("::1", 1230)),
        ("[::1]", ("::1", 1229)),
        ("[::1]:", ("::1", 1229)),
        ("10.0.0.1:", ("10.0.0.1", 1229)),
        ("::1", ("::1", 1229)),
        ("fd00::1", ("fd00::1", 1229)),
    ],
)
def test_parse_tcp(text: str, expected: tuple[str, int]) -> None:
    assert parse_tcp(text, 1229) == expected


@pytest.mark.parametrize(
    "text", ["[::1", "[::1]x", "[::1]1230", "host:1230", "10.0.0.1:abc", ":0", ":65536", ":-1"]
)
def test_parse_tcp_errors(text: str) -> None:
    with pytest.raises(SettingsError):
        parse_tcp(text, 1229)


def test_default_port_follows_argument() -> None:
    assert parse_tcp("", 4000) == (DEFAULT_TCP_ADDRESS, 4000)
    assert parse_tcp(":65535", 4000) == (DEFAULT_TCP_ADDRESS, 65535)


def test_listeners() -> None:
    required, optional = Settings().listeners()
    assert [(x.group, x.port) for x in required] == [(DEFAULT_IPV4_GROUP, 1229)]
    assert [(x.group, x.port) for x in optional] == [(DEFAULT_IPV6_GROUP, 1229)]
    required, optional = Settings(family="ipv6", port=1300).listeners()
    assert [(x.group, x.port, x.family) for x in required] == [(DEFAULT_IPV6_GROUP, 1300, 6)]
    assert optional == []
    required, _ = Settings(address="239.1.2.3").listeners()
    assert required[0].group == "239.1.2.3"
    with pytest.raises(SettingsError):
        Settings(address="10.0.0.1").listeners()
