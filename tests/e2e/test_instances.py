"""Several daemons on one host, one per guest cluster, and paths that must never be clobbered.

fence-virt's advice is one key per guest cluster and one daemon per group/port. Each xvmd here
derives its control socket and audit trail from --instance or its port, under a temporary run
and state directory (XVMD_RUN_DIR, XVMD_STATE_DIR): the real /run/xvmd is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import make_key
from tests.support.harness import DOMAINS_XML, ClientResult, Netns, Xvmd, fence_xvm, run_xvmd_once
from xvmd.daemon import paths

pytestmark = pytest.mark.e2e

PORT_A = 22229
PORT_B = 22230
IN_USE = "address already in use (is fence_virtd or another xvmd running?)"

_HOLD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("bound", flush=True)
time.sleep(120)
"""


def daemon_args(key: Path, port: int, *extra: str) -> list[str]:
    return [
        *("--local", "--no-ccs", "-k", str(key), "-I", "lo", "-p", str(port)),
        *("-U", f"test://{DOMAINS_XML}", *extra),
    ]


@pytest.fixture
def held_port(netns: Netns) -> Iterator[int]:
    """PORT_A bound by another process in the namespace: a daemon that tried to bind before
    checking its paths would fail with 'address already in use' instead."""
    proc = subprocess.Popen(
        netns.cmd(sys.executable, "-c", _HOLD, str(PORT_A)), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "bound\n"
        yield PORT_A
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Run and state directories of every daemon and `xvmd status` in this test (the
    environment is inherited by run_xvmd_once; Xvmd gets it explicitly)."""
    env = {paths.RUN_DIR_ENV: str(tmp_path / "run"), paths.STATE_DIR_ENV: str(tmp_path / "state")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def refused(result: ClientResult, message: str) -> None:
    assert result.rc == 1, result.output
    assert f"xvmd: error: {message}" in result.stderr, result.output
    assert "Traceback" not in result.output
    assert IN_USE not in result.output  # the path was checked before the port was bound


# -- paths that are someone else's ----------------------------------------------------------------


def test_control_on_a_regular_file_is_refused_and_kept(
    netns: Netns, key_file: Path, tmp_path: Path, held_port: int
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("not a socket\n")
    args = daemon_args(key_file, held_port, "--control", str(precious))
    result = run_xvmd_once(netns, [*args, "--audit", str(tmp_path / "audit.jsonl")], timeout=20)
    refused(
        result,
        f"--control {precious} exists and is a regular file, not a socket; not removing it",
    )
    assert precious.read_text() == "not a socket\n"


def test_control_on_a_directory_is_refused_cleanly(
    netns: Netns, key_file: Path, tmp_path: Path, held_port: int
) -> None:
    (tmp_path / "ctl" / "inside").mkdir(parents=True)
    args = daemon_args(key_file, held_port, "--control", str(tmp_path / "ctl"))
    result = run_xvmd_once(netns, [*args, "--audit", str(tmp_path / "audit.jsonl")], timeout=20)
    refused(result, f"--control {tmp_path / 'ctl'} exists and is a directory, not a socket")
    assert (tmp_path / "ctl" / "inside").is_dir()


def test_audit_on_a_fifo_is_refused_at_once(
    netns: Netns, key_file: Path, tmp_path: Path, held_port: int
) -> None:
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    args = daemon_args(key_file, held_port, "--control", str(tmp_path / "x.sock"))
    result = run_xvmd_once(netns, [*args, "--audit", str(fifo)], timeout=20)
    refused(result, f"--audit {fifo} exists and is a FIFO, not a regular file")
    assert result.seconds < 10
    assert not (tmp_path / "x.sock").exists()


# -- two guest clusters, two daemons --------------------------------------------------------------


def wait_for_record(path: Path, op: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and f'"op":"{op}"' in path.read_text():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def two_clusters(
    netns: Netns, tmp_path: Path, dirs: dict[str, str]
) -> Iterator[tuple[Xvmd, Xvmd, Path, Path]]:
    """Cluster alpha: --instance alpha on PORT_A; the other: no name, PORT_B. Own keys."""
    key_a, key_b = make_key(tmp_path / "alpha.key"), make_key(tmp_path / "beta.key")
    alpha = Xvmd(
        netns,
        daemon_args(key_a, PORT_A, "--instance", "alpha"),
        tmp_path / "alpha.log",
        port=PORT_A,
        env=dirs,
    )
    beta = Xvmd(netns, daemon_args(key_b, PORT_B), tmp_path / "beta.log", port=PORT_B, env=dirs)
    try:
        yield alpha.start(), beta.start(), key_a, key_b
    finally:
        alpha.stop()
        beta.stop()


def test_two_guest_clusters_each_with_its_own_daemon(
    netns: Netns, tmp_path: Path, two_clusters: tuple[Xvmd, Xvmd, Path, Path]
) -> None:
    _alpha, _beta, key_a, key_b = two_clusters
    run, state = tmp_path / "run", tmp_path / "state"
    assert (run / "xvmd-alpha.sock").is_socket()
    assert (run / f"xvmd-{PORT_B}.sock").is_socket()
    for port, key, trail in ((PORT_A, key_a, "audit-alpha"), (PORT_B, key_b, f"audit-{PORT_B}")):
        res = fence_xvm(
            netns, "-p", str(port), "-k", str(key), "-t", "5", "-o", "status", "-H", "vm-01"
        )
        assert res.rc == 0, res.output
        assert wait_for_record(state / f"{trail}.jsonl", "status"), trail
    # Each daemon holds its own cluster's key only.
    wrong = fence_xvm(
        netns, "-p", str(PORT_A), "-k", str(key_b), "-t", "2", "-o", "status", "-H", "vm-01"
    )
    assert wrong.rc != 0
    assert not (run / "xvmd.sock").exists() and not (state / "audit.jsonl").exists()


def status_json(netns: Netns, *argv: str) -> tuple[int, object]:
    result = run_xvmd_once(netns, ["status", "--json", *argv])
    assert result.rc in (0, 1), result.output
    return result.rc, json.loads(result.stdout)


def test_status_finds_each_daemon(
    netns: Netns, tmp_path: Path, two_clusters: tuple[Xvmd, Xvmd, Path, Path]
) -> None:
    alpha, beta, _ka, _kb = two_clusters
    assert alpha.proc is not None and beta.proc is not None
    run = tmp_path / "run"
    _rc, doc = status_json(netns, "--instance", "alpha")
    assert isinstance(doc, dict) and doc["pid"] == alpha.proc.pid
    assert any(f"port {PORT_A}" in lst for lst in doc["listeners"])
    _rc, doc = status_json(netns, "-p", str(PORT_B))
    assert isinstance(doc, dict) and doc["pid"] == beta.proc.pid
    # No selector, no default daemon: both, one after another.
    rc, docs = status_json(netns)
    assert rc == 0 and isinstance(docs, list)
    assert sorted((d["control"], d["pid"]) for d in docs) == sorted(
        [
            (str(run / "xvmd-alpha.sock"), alpha.proc.pid),
            (str(run / f"xvmd-{PORT_B}.sock"), beta.proc.pid),
        ]
    )
    text = run_xvmd_once(netns, ["status"])
    assert text.rc == 0, text.output
    assert f"== {run / 'xvmd-alpha.sock'}" in text.stdout
    assert f"== {run / f'xvmd-{PORT_B}.sock'}" in text.stdout
    missing = run_xvmd_once(netns, ["status", "--instance", "gamma"])
    assert missing.rc == 2 and "xvmd is not running" in missing.stderr


def test_a_second_daemon_for_a_served_port_or_name_is_refused(
    netns: Netns, tmp_path: Path, two_clusters: tuple[Xvmd, Xvmd, Path, Path]
) -> None:
    _alpha, _beta, key_a, _kb = two_clusters
    run, state = tmp_path / "run", tmp_path / "state"
    for extra in (["--instance", "gamma"], []):
        result = run_xvmd_once(netns, daemon_args(key_a, PORT_A, *extra))
        assert result.rc == 1, result.output
        assert IN_USE in result.stderr and "Traceback" not in result.output
    assert not (run / "xvmd-gamma.sock").exists() and not (state / "audit-gamma.jsonl").exists()
    # The same name on a free port: its control socket answers, so the name is taken.
    same_name = run_xvmd_once(netns, daemon_args(key_a, PORT_B + 1, "--instance", "alpha"))
    assert same_name.rc == 1, same_name.output
    assert "another xvmd is running" in same_name.stderr and "Traceback" not in same_name.output
