"""The audit trail on real disks: a full file system (a small tmpfs in a private mount namespace,
never mounted on the host) and logrotate renaming the file under a running daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.support.harness import REPO, Netns, Xvmd, fence_xvm

pytestmark = pytest.mark.e2e

LOGROTATE_SNIPPET = REPO / "contrib" / "logrotate" / "xvmd"

# Runs in its own mount namespace on a 64 KiB tmpfs (16 pages). tmpfs allocates whole pages: with
# the audit file's last page partly used and no page free, a record crossing the page boundary
# is written up to the boundary (a short write) and the rest fails with ENOSPC.
CHILD = r"""
import errno, json, os, sys
sys.path.insert(0, sys.argv[1])
from xvmd.daemon.audit import AuditLog

mnt = sys.argv[2]
short = []
real_write = os.write
def counting_write(fd, data):  # counts short writes; the real write does the work
    n = real_write(fd, data)
    if n < len(data):
        short.append([len(data), n])
    return n
os.write = counting_write

path = os.path.join(mnt, "audit.jsonl")
audit = AuditLog(path)
def rec(n):
    return {"epoch": 1700000000.0 + n, "n": n, "op": "off", "detail": "x" * 3000}
audit.write(rec(0), True)  # 3 KB of the file's first page
filler_path = os.path.join(mnt, "filler")
filler = os.open(filler_path, os.O_WRONLY | os.O_CREAT, 0o600)
try:
    while True:
        real_write(filler, b"\0" * 4096)
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
for n in (1, 2, 3):
    audit.write(rec(n), True)  # fits only up to the end of the page
os.close(filler)
os.unlink(filler_path)
audit.write(rec(9), True)
with open(path) as fh:
    text = fh.read()
print(json.dumps({"status": audit.status(), "short": short, "file": text}))
"""


def test_a_full_disk_never_leaves_a_cut_or_glued_record(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = 'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" -c "$3" "$4" "$1"'
    args = [str(mnt), sys.executable, CHILD, str(REPO)]  # $1..$4
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert not any(mnt.iterdir())  # the tmpfs was private to the child
    got = json.loads(proc.stdout)
    assert got["short"], "no write stopped part-way: the test proves nothing"
    text = got["file"]
    assert text.endswith("\n")
    assert [json.loads(x)["n"] for x in text.splitlines()] == [0, 9]  # whole records only
    status = got["status"]
    assert (status["written"], status["failures"]) == (2, 3)
    assert status["last_failure"] == "No space left on device"
    assert "No space left on device" in proc.stderr  # one ERROR per lost record


# -- rotation under a running daemon -------------------------------------------------------------


def _trail(d: Xvmd) -> Path:
    return Path(d.args[d.args.index("--audit") + 1])


def _targets(path: Path) -> list[str]:
    return [json.loads(x)["target"] for x in path.read_text().splitlines()]


def _status(netns: Netns, d: Xvmd, key_file: Path, vm: str) -> None:
    common = ["-p", str(d.port), "-k", str(key_file), "-t", "5"]
    res = fence_xvm(netns, *common, "-o", "status", "-H", vm)
    assert res.rc == 0, res.output


def test_a_renamed_trail_is_followed_by_the_running_daemon(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    trail = _trail(d)
    _status(netns, d, key_file, "vm-01")
    rotated = trail.with_name(trail.name + ".1")
    os.rename(trail, rotated)
    _status(netns, d, key_file, "vm-02")
    assert _targets(trail) == ["vm-02"]  # a fresh file at the original path
    assert _targets(rotated) == ["vm-01"]
    assert trail.stat().st_mode & 0o777 == 0o600
    assert d.wait_for_log("audit trail reopened (rotated?)")


def test_sighup_reopens_the_trail_at_once(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    trail = _trail(d)
    _status(netns, d, key_file, "vm-01")
    os.rename(trail, trail.with_name(trail.name + ".1"))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not trail.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert trail.exists() and trail.stat().st_size == 0, d.log()


def test_the_shipped_logrotate_snippet_rotates_a_live_trail(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, tmp_path: Path
) -> None:
    if shutil.which("logrotate") is None:
        pytest.skip("needs logrotate")
    d = start_xvmd()
    trail = _trail(d)
    _status(netns, d, key_file, "vm-01")
    snippet = LOGROTATE_SNIPPET.read_text()
    assert "copytruncate" not in re.sub(r"#.*", "", snippet)
    # Our file instead of /var/lib/xvmd's; no postrotate (it would signal the host's xvmd).
    conf = snippet.replace("/var/lib/xvmd/audit*.jsonl", f"{tmp_path}/audit*.jsonl")
    conf = re.sub(r"\n\s*postrotate\n.*?endscript", "", conf, flags=re.S)
    (tmp_path / "logrotate.conf").write_text(conf)
    proc = subprocess.run(
        ["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), "logrotate.conf"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rotated = trail.with_name(trail.name + ".1")  # delaycompress: not compressed yet
    assert _targets(rotated) == ["vm-01"]
    assert trail.read_text() == "" and trail.stat().st_mode & 0o777 == 0o600  # create 0600
    _status(netns, d, key_file, "vm-02")
    assert _targets(trail) == ["vm-02"]
    assert _targets(rotated) == ["vm-01"]
