"""The daemon's paths: the instance naming rule, and the checks that refuse a path before
anything is bound (on real files of every kind, all under tmp_path)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from xvmd.daemon import control, paths


@pytest.fixture(autouse=True)
def _dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in directories, whatever the environment running the tests says."""
    monkeypatch.delenv(paths.RUN_DIR_ENV, raising=False)
    monkeypatch.delenv(paths.STATE_DIR_ENV, raising=False)


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    """A bound unix socket nobody listens on: what a killed daemon leaves behind."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        yield path


def regular(tmp_path: Path) -> Path:
    path = tmp_path / "precious"
    path.write_text("keep me\n")
    return path


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def link_to_dir(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    path = tmp_path / "link"
    path.symlink_to(tmp_path / "d")
    return path


# -- the naming rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "port", "names"),
    [
        (None, 1229, ("xvmd.sock", "audit.jsonl")),  # today's defaults, unchanged
        (None, 1230, ("xvmd-1230.sock", "audit-1230.jsonl")),
        ("alpha", 1229, ("xvmd-alpha.sock", "audit-alpha.jsonl")),
        ("beta.2", 1230, ("xvmd-beta.2.sock", "audit-beta.2.jsonl")),  # the name wins
    ],
)
def test_instance_paths(instance: str | None, port: int, names: tuple[str, str]) -> None:
    sock, trail = names
    assert paths.instance_paths(instance, port) == (f"/run/xvmd/{sock}", f"/var/lib/xvmd/{trail}")


def test_defaults_are_the_documented_ones() -> None:
    assert paths.instance_paths(None, 1229) == (paths.DEFAULT_CONTROL, paths.DEFAULT_AUDIT)
    assert control.DEFAULT_CONTROL == "/run/xvmd/xvmd.sock"
    assert paths.DEFAULT_AUDIT == "/var/lib/xvmd/audit.jsonl"


def test_directories_follow_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.RUN_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.setenv(paths.STATE_DIR_ENV, str(tmp_path / "state"))
    assert paths.instance_paths("a", 1229) == (
        str(tmp_path / "run" / "xvmd-a.sock"),
        str(tmp_path / "state" / "audit-a.jsonl"),
    )


@pytest.mark.parametrize("name", ["alpha", "a", "9", "guest-cluster_2.prod", "x" * 64])
def test_good_instance_names(name: str) -> None:
    assert paths.instance_problem(name) is None


@pytest.mark.parametrize(
    "name", ["", "-x", ".hidden", "a/b", "..", "a b", "a:b", "a\\x2d", "é", "x" * 65]
)
def test_bad_instance_names(name: str) -> None:
    problem = paths.instance_problem(name)
    assert problem is not None and "instance name" in problem


# -- --control -------------------------------------------------------------------------------------


def test_control_may_be_absent_or_a_socket(tmp_path: Path, unix_socket: Path) -> None:
    assert paths.check_control_path(str(tmp_path / "new.sock")) is None
    assert paths.check_control_path(str(tmp_path / "a" / "b" / "new.sock")) is None  # created
    assert paths.check_control_path(str(unix_socket)) is None


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (regular, "is a regular file"),
        (lambda t: t, "is a directory"),
        (fifo, "is a FIFO"),
        (link_to_dir, "is a symbolic link to a directory"),
    ],
)
def test_control_refuses_what_is_not_a_socket(tmp_path: Path, make: object, kind: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    problem = paths.check_control_path(str(path))
    assert problem == f"--control {path} exists and {kind}, not a socket; not removing it"


def test_control_refuses_a_link_to_a_socket_and_a_dangling_link(
    tmp_path: Path, unix_socket: Path
) -> None:
    (tmp_path / "to-sock").symlink_to(unix_socket)
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    assert "a symbolic link to a socket" in str(paths.check_control_path(str(tmp_path / "to-sock")))
    assert "a dangling symbolic link" in str(paths.check_control_path(str(tmp_path / "dangling")))


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_control_refuses_a_device() -> None:
    assert "a character device" in str(paths.check_control_path("/dev/null"))


def test_control_parent_must_be_a_directory(tmp_path: Path) -> None:
    file = regular(tmp_path)
    for path in (file / "x.sock", file / "deeper" / "x.sock"):
        problem = paths.check_control_path(str(path))
        assert problem == f"--control {path}: {file} is a regular file, not a directory"


# -- --audit ---------------------------------------------------------------------------------------


def test_audit_may_be_absent_a_file_or_a_link_to_one(tmp_path: Path) -> None:
    file = regular(tmp_path)
    (tmp_path / "to-file").symlink_to(file)
    (tmp_path / "dangling").symlink_to(tmp_path / "new" / "trail.jsonl")
    for path in (file, tmp_path / "to-file", tmp_path / "n" / "trail.jsonl", tmp_path / "dangling"):
        assert paths.check_audit_path(str(path)) is None, path


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda t: t, "is a directory"),
        (fifo, "is a FIFO"),
        (link_to_dir, "is a symbolic link to a directory"),
    ],
)
def test_audit_refuses_what_is_not_a_regular_file(tmp_path: Path, make: object, kind: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    problem = paths.check_audit_path(str(path))
    assert problem == f"--audit {path} exists and {kind}, not a regular file"


def test_audit_refuses_a_socket_and_a_device(unix_socket: Path) -> None:
    assert "is a socket" in str(paths.check_audit_path(str(unix_socket)))
    if os.path.exists("/dev/null"):
        assert "is a character device" in str(paths.check_audit_path("/dev/null"))


def test_audit_parent_must_be_a_directory(tmp_path: Path) -> None:
    file = regular(tmp_path)
    problem = paths.check_audit_path(str(file / "audit.jsonl"))
    assert problem == f"--audit {file / 'audit.jsonl'}: {file} is a regular file, not a directory"


def test_check_paths_reports_the_first_problem(tmp_path: Path) -> None:
    file, pipe = regular(tmp_path), fifo(tmp_path)
    assert paths.check_paths(None, None) is None
    assert paths.check_paths(str(tmp_path / "x.sock"), str(tmp_path / "a.jsonl")) is None
    assert str(paths.check_paths(str(file), str(pipe))).startswith("--control")
    assert str(paths.check_paths(str(tmp_path / "x.sock"), str(pipe))).startswith("--audit")


# -- control.serve never removes what is not a socket ----------------------------------------------


async def _serve_once(path: Path) -> None:
    server = await control.serve(str(path), lambda: {"ok": True})
    server.close()
    await server.wait_closed()


def test_serve_leaves_a_regular_file_alone(tmp_path: Path) -> None:
    file = regular(tmp_path)
    with pytest.raises(control.ControlError, match="regular file, not a socket; not removing it"):
        asyncio.run(_serve_once(file))
    assert file.read_text() == "keep me\n"


def test_serve_leaves_a_directory_alone(tmp_path: Path) -> None:
    (tmp_path / "d" / "inside").mkdir(parents=True)
    with pytest.raises(control.ControlError, match="is a directory"):
        asyncio.run(_serve_once(tmp_path / "d"))
    assert (tmp_path / "d" / "inside").is_dir()


def test_serve_replaces_a_stale_socket(unix_socket: Path) -> None:
    asyncio.run(_serve_once(unix_socket))
    assert unix_socket.is_socket()
