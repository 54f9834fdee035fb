"""The audit trail never tears: whole records or a counted failure, torn tails closed off,
rotation followed, and nothing but a regular file opened (never blocking on a FIFO)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import REPO
from tests.support.promptly import promptly
from xvmd.cli import audit as audit_cmd
from xvmd.daemon.audit import AuditError, AuditLog, handled_power_actions

STATUS_KEYS = {
    "path",
    "written",
    "failures",
    "last_failure",
    "last_failure_epoch",
    "reopened",
    "torn_tail",
}


def rec(seqno: int, op: str = "status", epoch: float = 1_700_000_000.0, **more: object) -> dict:
    return {"epoch": epoch + seqno, "op": op, "seqno": seqno, "target": "vm", **more}


def line(r: dict) -> str:
    return json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n"


def records(path: Path) -> list[dict]:
    """Every line must be one whole record."""
    return [json.loads(x) for x in path.read_text().splitlines()]


# -- a record torn by a crash ----------------------------------------------------------------------


def test_a_torn_tail_is_closed_off_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trail = tmp_path / "audit.jsonl"
    torn = '{"epoch":1700000001.5,"op":"of'
    trail.write_text(line(rec(0)) + torn)
    with caplog.at_level(logging.WARNING, logger="xvmd.audit"):
        audit = AuditLog(str(trail))
    assert f"{trail} ends in an incomplete record of {len(torn)} bytes" in caplog.text
    status = audit.status()
    assert status["torn_tail"] is not None and f"{len(torn)} bytes" in status["torn_tail"]
    audit.write(rec(2, "off"), durable=True)
    audit.close()
    assert trail.read_text().splitlines() == [
        line(rec(0)).strip(),
        torn,
        line(rec(2, "off")).strip(),
    ]


def test_a_clean_file_is_left_alone(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    trail.write_text(line(rec(0)))
    audit = AuditLog(str(trail))
    audit.write(rec(1), durable=False)
    status = audit.status()
    audit.close()
    assert set(status) == STATUS_KEYS
    assert status == {
        "path": str(trail),
        "written": 1,
        "failures": 0,
        "last_failure": None,
        "last_failure_epoch": None,
        "reopened": 0,
        "torn_tail": None,
    }
    assert records(trail) == [rec(0), rec(1)]


# -- rotation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("move", ["rename", "unlink"])
def test_the_next_record_follows_a_rotated_or_deleted_file(
    tmp_path: Path, move: str, caplog: pytest.LogCaptureFixture
) -> None:
    trail = tmp_path / "audit.jsonl"
    audit = AuditLog(str(trail))
    audit.write(rec(1, "off"), durable=True)
    old = tmp_path / "audit.jsonl.1"
    if move == "rename":
        os.rename(trail, old)
    else:
        os.unlink(trail)
    with caplog.at_level(logging.INFO, logger="xvmd.audit"):
        audit.write(rec(2, "off"), durable=True)
    assert "audit trail reopened (rotated?)" in caplog.text
    assert records(trail) == [rec(2, "off")]
    assert trail.stat().st_mode & 0o777 == 0o600
    if move == "rename":
        assert records(old) == [rec(1, "off")]
    status = audit.status()
    audit.close()
    assert (status["reopened"], status["written"], status["failures"]) == (1, 2, 0)


def test_reopen_creates_the_new_file_at_once_and_only_when_moved(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    audit = AuditLog(str(trail))
    audit.reopen()  # nothing moved: nothing to do
    assert audit.status()["reopened"] == 0
    os.rename(trail, tmp_path / "audit.jsonl.1")
    audit.reopen()  # SIGHUP from logrotate's postrotate
    assert trail.exists() and audit.status()["reopened"] == 1
    audit.write(rec(1), durable=False)
    audit.close()
    assert records(trail) == [rec(1)]


def test_a_failed_reopen_is_counted_and_retried_and_never_raises(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    audit = AuditLog(str(trail))
    os.rename(trail, tmp_path / "audit.jsonl.1")
    trail.mkdir()  # something in the way: cannot reopen
    audit.write(rec(1), durable=True)  # kept in the old file meanwhile
    status = audit.status()
    assert status["failures"] == 1 and status["reopened"] == 0
    assert status["last_failure"] == "reopen: a directory, not a regular file"
    assert isinstance(status["last_failure_epoch"], float)
    assert records(tmp_path / "audit.jsonl.1") == [rec(1)]
    trail.rmdir()
    audit.write(rec(2), durable=True)
    assert audit.status()["reopened"] == 1
    assert records(trail) == [rec(2)]
    audit.close()
    audit.write(rec(3), durable=False)  # after close: counted, not raised
    assert audit.status()["failures"] == 2


# -- nothing but a regular file --------------------------------------------------------------------


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(AuditError) as exc:
        promptly(lambda: AuditLog(str(fifo)).close(), unblock=fifo)
    assert str(exc.value) == f"audit file {fifo} is a FIFO, not a regular file"


def test_a_directory_and_a_socket_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"is a directory, not a regular file$"):
        AuditLog(str(tmp_path))
    path = tmp_path / "audit.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(AuditError, match=r"is a socket, not a regular file$"):
            AuditLog(str(path))


# -- a short write on a real kernel: RLIMIT_FSIZE stops a write part-way --------------------------

CHILD = r"""
import errno, json, os, resource, signal, sys
sys.path.insert(0, sys.argv[1])
from xvmd.daemon.audit import AuditLog

path, mode = sys.argv[2], sys.argv[3]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a fatal signal
short = []
real_write = os.write
def counting_write(fd, data):
    n = real_write(fd, data)
    if n < len(data):
        short.append((len(data), n))
    return n
os.write = counting_write
if mode == "no-truncate":
    def refuse(fd, length):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    os.ftruncate = refuse
audit = AuditLog(path)
pad = "x" * 300
audit.write({"epoch": 1.0, "n": 0, "pad": pad}, True)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 100, hard))
for n in (1, 2, 3):
    audit.write({"epoch": 1.0 + n, "n": n, "pad": pad}, True)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
audit.write({"epoch": 9.0, "n": 9, "pad": pad}, True)
print(json.dumps({"status": audit.status(), "short": short}))
"""


def _short_writes(tmp_path: Path, mode: str) -> tuple[list[str], dict]:
    trail = tmp_path / "audit.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), str(trail), mode],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return trail.read_text().split("\n"), json.loads(out.stdout)


def test_a_record_cut_short_is_removed_and_counted(tmp_path: Path) -> None:
    lines, got = _short_writes(tmp_path, "truncate")
    assert got["short"], "the kernel never stopped a write part-way: the test proves nothing"
    assert lines[-1] == ""  # the file ends with a newline
    assert [json.loads(x)["n"] for x in lines[:-1]] == [0, 9]  # whole records only
    status = got["status"]
    assert (status["written"], status["failures"]) == (2, 3)
    assert status["last_failure"] == "File too large"


def test_a_partial_record_that_cannot_be_removed_is_never_glued_to_the_next(
    tmp_path: Path,
) -> None:
    lines, got = _short_writes(tmp_path, "no-truncate")
    assert got["short"]
    assert lines[-1] == ""
    whole = []
    for x in lines[:-1]:
        try:
            whole.append(json.loads(x)["n"])
        except ValueError:
            assert not x.startswith('{"epoch":9')  # the last record is on its own line
    assert whole == [0, 9]
    assert got["status"]["failures"] == 3


# -- readers ---------------------------------------------------------------------------------------


def test_xvmd_audit_reports_torn_lines_and_shows_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = tmp_path / "audit.jsonl"
    trail.write_text(
        line(rec(1, "off", result="success"))
        + '{"epoch":1700000002.1,"op":"reb\n'  # cut by a full disk, then closed off
        + line(rec(3, "reboot", result="success"))
        + '{"epoch":"soon"}\n'
        + '{"epoch":1700000005.0,"op":"on"'  # the crash left no newline
    )
    assert audit_cmd.main(["--file", str(trail), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(x)["seqno"] for x in out.splitlines()] == [1, 3]
    assert "3 unreadable lines skipped (torn records?) at lines 2, 4, 5" in err
    assert str(trail) in err


def test_handled_power_actions_skips_an_unterminated_last_line(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    trail.write_text(
        line(rec(1, "off", result="success"))
        + line(rec(2, "reboot", result="success"))[:-30]
        + "\n"  # a torn record, closed off
        + '{"detail":"x","domain":null,"epoch":17'  # torn inside the epoch: no time at all
    )
    got = handled_power_actions(str(trail), since=1_600_000_000.0)
    assert got == [(1_700_000_001.0, "off", 1, "vm")]


def test_handled_power_actions_reads_the_file_logrotate_just_renamed(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.1").write_text(
        line(rec(-5000, "off", result="success")) + line(rec(1, "off", result="success"))
    )
    trail.write_text(line(rec(2, "on", result="success")))
    got = handled_power_actions(str(trail), since=1_699_999_000.0)
    assert [seqno for _, _, seqno, _ in got] == [1, 2]


@pytest.mark.parametrize(
    ("selector", "name"),
    [
        (["--instance", "beta"], "audit-beta.jsonl"),
        (["-p", "1230"], "audit-1230.jsonl"),
        ([], "audit.jsonl"),
    ],
)
def test_xvmd_audit_finds_an_instances_trail_by_the_daemons_naming_rule(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    selector: list[str],
    name: str,
) -> None:
    monkeypatch.setenv("XVMD_STATE_DIR", str(tmp_path))
    for other in ("audit-beta.jsonl", "audit-1230.jsonl", "audit.jsonl"):
        log = AuditLog(str(tmp_path / other))
        log.write({"epoch": 1.0, "op": "status", "target": other}, durable=False)
        log.close()
    assert audit_cmd.main([*selector, "--json"]) == 0
    shown = [json.loads(line)["target"] for line in capsys.readouterr().out.splitlines()]
    assert shown == [name]
