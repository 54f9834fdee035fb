"""Command-line errors: usage errors exit 2, a key file that cannot work exits 1. The paths a
daemon derives from --instance or its port, and which daemons ``xvmd status`` finds."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xvmd.cli import run as cli
from xvmd.cli import status as status_cmd
from xvmd.core.policy import Policy
from xvmd.daemon import paths
from xvmd.daemon.keys import KeyFileError, load_key
from xvmd.daemon.settings import (
    DEFAULT_IPV4_GROUP,
    DEFAULT_IPV6_GROUP,
    DEFAULT_TCP_ADDRESS,
    Settings,
    SettingsError,
    parse_tcp,
)
from xvmd.protocol.wire import HashType

LOCAL = ["--local", "--no-ccs"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The daemon front-end configures the root logger; put pytest's handlers back afterwards."""
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
        cli.main(argv)
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
    assert cli.main(argv) == 0
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
    assert cli.main(argv) == 0
    [(settings, keys)] = no_serve
    assert keys == []
    assert not settings.needs_key


# -- key file errors -------------------------------------------------------------------------------


def key_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main([*LOCAL, "-k", str(path)]) == 1
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


# -- control socket and audit trail: derived from --instance or the port ---------------------------


@pytest.fixture
def default_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.RUN_DIR_ENV, raising=False)
    monkeypatch.delenv(paths.STATE_DIR_ENV, raising=False)


def derived(argv: list[str], ccs_attrs: dict[str, str] | None = None) -> Settings:
    args = cli.build_parser().parse_args([*LOCAL, *argv])
    return cli.settings_from_args(args, ccs_attrs)


@pytest.mark.usefixtures("default_dirs")
@pytest.mark.parametrize(
    ("argv", "ccs_attrs", "sock", "trail"),
    [
        ([], None, "xvmd.sock", "audit.jsonl"),
        (["-p", "1229"], None, "xvmd.sock", "audit.jsonl"),
        (["-p", "1230"], None, "xvmd-1230.sock", "audit-1230.jsonl"),
        (["--instance", "alpha"], None, "xvmd-alpha.sock", "audit-alpha.jsonl"),
        (["--instance", "alpha", "-p", "1230"], None, "xvmd-alpha.sock", "audit-alpha.jsonl"),
        ([], {"port": "1240"}, "xvmd-1240.sock", "audit-1240.jsonl"),  # <fence_xvmd port=...>
        (["-p", "1250"], {"port": "1240"}, "xvmd-1250.sock", "audit-1250.jsonl"),
    ],
)
def test_default_paths_derive_from_instance_or_port(
    argv: list[str], ccs_attrs: dict[str, str] | None, sock: str, trail: str
) -> None:
    settings = derived(argv, ccs_attrs)
    assert settings.control == f"/run/xvmd/{sock}"
    assert settings.audit == f"/var/lib/xvmd/{trail}"
    placements = trail.replace("audit", "placements").replace(".jsonl", ".json")
    assert settings.state == f"/var/lib/xvmd/{placements}"
    assert settings.instance == (argv[1] if argv[:1] == ["--instance"] else None)


@pytest.mark.usefixtures("default_dirs")
def test_explicit_paths_win(tmp_path: Path) -> None:
    settings = derived(["--instance", "a", "--control", "x.sock", "--audit", str(tmp_path / "t")])
    assert settings.control == os.path.abspath("x.sock")
    assert settings.audit == str(tmp_path / "t")
    assert settings.state == str(tmp_path / "placements-a.json")  # beside the trail
    settings = derived(["-p", "1230", "--control", "none", "--audit", "none", "--state", "none"])
    assert settings.control is None and settings.audit is None and settings.state is None
    assert derived(["--state", str(tmp_path / "s.json")]).state == str(tmp_path / "s.json")


def test_derived_paths_follow_the_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.RUN_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.setenv(paths.STATE_DIR_ENV, str(tmp_path / "state"))
    settings = derived(["--instance", "beta"])
    assert settings.control == str(tmp_path / "run" / "xvmd-beta.sock")
    assert settings.audit == str(tmp_path / "state" / "audit-beta.jsonl")


def test_the_daemon_gets_the_derived_paths(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_serve: list[tuple[Settings, list[object]]],
) -> None:
    monkeypatch.setenv(paths.RUN_DIR_ENV, str(tmp_path))
    key = tmp_path / "key"
    key.write_bytes(b"secret")
    key.chmod(0o600)
    assert cli.main([*LOCAL, "-k", str(key), "-p", "1300"]) == 0
    [(settings, _keys)] = no_serve
    assert settings.control == str(tmp_path / "xvmd-1300.sock")


@pytest.mark.parametrize("name", ["a/b", "-x", ".x", "a b", "x" * 65, ""])
def test_bad_instance_is_a_usage_error(
    name: str, capsys: pytest.CaptureFixture[str], no_serve: list[tuple[Settings, list[object]]]
) -> None:
    err = usage_error([*LOCAL, f"--instance={name}"], capsys)
    assert "instance name" in err
    assert no_serve == []


# -- xvmd status: which daemon, and what it shows --------------------------------------------------


def status_doc(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "version": "0.1.0",
        "pid": 42,
        "started": 0,
        "mode": "local",
        "listeners": ["225.0.0.12 port 1229"],
        "backend": {"description": "test", "reachable": True},
        "quorum": None,
        "config": None,
    }
    doc.update(extra)
    return doc


def rendered(doc: dict[str, object]) -> list[str]:
    out = io.StringIO()
    status_cmd.render(doc, out)
    return out.getvalue().splitlines()


def test_render_without_the_new_keys_is_unchanged() -> None:
    lines = rendered(status_doc())
    assert lines[0].startswith("xvmd 0.1.0 (pid 42), local mode, up ")
    assert not [x for x in lines if x.startswith(("audit:", "reload:"))]


def test_render_instance_audit_and_reload() -> None:
    epoch = 1_700_000_000.0
    clock = time.strftime("%H:%M:%S", time.localtime(epoch))
    doc = status_doc(
        instance="beta",
        audit={
            "path": "/var/lib/xvmd/audit-beta.jsonl",
            "written": 12,
            "failures": 2,
            "last_failure": "No space left on device",
            "last_failure_epoch": epoch,
            "reopened": 1,
            "torn_tail": "84 bytes without a newline",
        },
        reload={
            "reloads": 3,
            "failures": 1,
            "last_problem": "cluster.conf: 2 errors",
            "last_problem_epoch": epoch,
            "machinery": "inotify watch lost",
        },
    )
    lines = rendered(doc)
    assert lines[0].startswith("xvmd 0.1.0 (pid 42), instance beta, local mode, up ")
    assert (
        "audit: /var/lib/xvmd/audit-beta.jsonl (12 records; 2 FAILED, last: No space left on "
        f"device at {clock}; reopened 1 times)"
    ) in lines
    assert "  torn last line found at start: 84 bytes without a newline" in lines
    assert (
        "reload: FAILED -- inotify watch lost; 1 changes rejected, last: cluster.conf: 2 errors "
        f"at {clock}"
    ) in lines


def test_render_healthy_audit_and_reload_and_audit_off() -> None:
    ok_audit = {"path": "/a.jsonl", "written": 5, "failures": 0, "reopened": 0, "torn_tail": None}
    lines = rendered(status_doc(audit=ok_audit, reload={"failures": 0, "machinery": "ok"}))
    assert "audit: /a.jsonl (5 records)" in lines
    assert "reload: ok" in lines
    lines = rendered(status_doc(audit=None, reload=None))
    assert "audit: off" in lines
    assert not [x for x in lines if x.startswith("reload:")]


class _Answer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(json.dumps(self.server.doc).encode())  # type: ignore[attr-defined]


@pytest.fixture
def daemons(run_dir: Path) -> Iterator[Callable[[str, dict[str, object]], None]]:
    """Real control sockets in run_dir, answering with the given status document."""
    servers: list[socketserver.UnixStreamServer] = []

    def answer(name: str, doc: dict[str, object]) -> None:
        server = socketserver.UnixStreamServer(str(run_dir / name), _Answer)
        server.doc = doc  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)

    yield answer
    for server in servers:
        server.shutdown()
        server.server_close()


def status(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = status_cmd.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_status_without_a_daemon(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(run_dir / "xvmd-old.sock"))  # left behind by a stopped daemon
        code, out, err = status([], capsys)
    assert (code, out) == (2, "")
    assert f"xvmd is not running (no control socket in {run_dir} answers)" in err
    code, _out, err = status(["--instance", "alpha"], capsys)
    assert code == 2 and str(run_dir / "xvmd-alpha.sock") in err


def test_status_finds_the_one_instance(
    daemons: Callable[[str, dict[str, object]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    daemons("xvmd-alpha.sock", status_doc(instance="alpha"))
    code, out, _err = status([], capsys)
    assert code == 0
    assert out.startswith("xvmd 0.1.0 (pid 42), instance alpha,")


def test_status_shows_every_instance_with_the_worst_exit_code(
    run_dir: Path,
    daemons: Callable[[str, dict[str, object]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    inquorate = {"quorate": False, "reason": "lost", "connected": False}
    daemons("xvmd-alpha.sock", status_doc(instance="alpha"))
    daemons("xvmd-1230.sock", status_doc(pid=43, mode="cluster", quorum=inquorate))
    code, out, _err = status([], capsys)
    assert code == 1
    assert (
        f"== {run_dir / 'xvmd-1230.sock'}\n" in out and f"== {run_dir / 'xvmd-alpha.sock'}" in out
    )
    assert "(pid 42), instance alpha" in out and "(pid 43), cluster mode" in out
    code, out, _err = status(["--json"], capsys)
    docs = json.loads(out)
    assert [(d["control"], d["pid"]) for d in docs] == [
        (str(run_dir / "xvmd-1230.sock"), 43),
        (str(run_dir / "xvmd-alpha.sock"), 42),
    ]
    assert status(["--instance", "alpha"], capsys)[:2] == (
        0,
        rendered_text(status_doc(instance="alpha")),
    )
    code, out, _err = status(["-p", "1230", "--json"], capsys)
    assert (code, json.loads(out)["pid"]) == (1, 43)


def rendered_text(doc: dict[str, object]) -> str:
    return "\n".join(rendered(doc)) + "\n"


def test_status_prefers_the_default_daemon(
    daemons: Callable[[str, dict[str, object]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    daemons("xvmd.sock", status_doc(pid=1))
    daemons("xvmd-alpha.sock", status_doc(pid=2, instance="alpha"))
    code, out, _err = status(["--json"], capsys)
    assert (code, json.loads(out)["pid"]) == (0, 1)  # as before: one document
    code, out, _err = status(["-p", "1229", "--json"], capsys)
    assert json.loads(out)["pid"] == 1


def test_status_selectors_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--instance", "a", "-p", "1230"], ["--control", "x", "--instance", "a"]):
        with pytest.raises(SystemExit) as info:
            status_cmd.main(argv)
        assert info.value.code == 2
        assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        status_cmd.main(["--instance", "a/b"])
    assert "instance name" in capsys.readouterr().err


def test_render_the_host_group() -> None:
    hosts = {
        "group": "xvmd:guests",
        "joined": True,
        "node": 1,
        "events": True,
        "members": [
            {"node": 1, "name": "hv1", "devices": ["xvm"], "domains": 3, "active": ["vm-a"]},
            {"node": 2, "name": "hv2", "devices": ["xvm"], "domains": 1, "active": []},
        ],
        "pending": [3],
        "departed": [{"vm": "vm-c", "uuid": "u", "node": 4}],
        "declined": 7,
        "recent_declined": [{"request": "status 'node2' seqno 9", "responder": 2, "why": "w"}],
        "bad_messages": {"spoofed": 1},
    }
    lines = rendered(status_doc(hosts=hosts))
    start = lines.index("host group xvmd:guests: joined as node 1 (hypervisor events)")
    assert lines[start + 1 : start + 7] == [
        "  host 1 hv1: xvm; 3 domains, active: vm-a",
        "  host 2 hv2: xvm; 1 domains, active: none",
        "  host 3: joined, has not published its domains yet",
        "  vm-c: last seen active on host 4, which left",
        "  answers left to other hosts: 7; bad messages: spoofed 1",
        "    status 'node2' seqno 9 -> host 2 (w)",
    ]
    assert "NOT JOINED" in rendered(status_doc(hosts={**hosts, "joined": False}))[start]
