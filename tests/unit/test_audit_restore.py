"""Replay refusal survives a restart: handled power actions are read back from the audit trail."""

from __future__ import annotations

import json
import os
from pathlib import Path

from xvmd.daemon.audit import handled_power_actions


def record(epoch: float, op: str, seqno: int, result: str = "success", target: str = "vm") -> str:
    rec = {"epoch": epoch, "op": op, "seqno": seqno, "target": target, "result": result}
    return json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n"


def test_recent_handled_power_actions_come_back_oldest_first(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    trail.write_text(
        record(100.0, "off", 1)  # older than the hour asked for
        + record(5000.0, "status", 2)
        + record(5001.0, "off", 3, target="Node1")
        + record(5002.0, "reboot", 4, result="failed")  # answered: the request was handled
        + record(5003.0, "on", 5, result="dropped")  # refused before any callback: not handled
        + "not json at all\n"
        + record(5004.0, "on", 6, result="auth-failed")
    )
    got = handled_power_actions(str(trail), since=1000.0)
    assert got == [
        (5001.0, "off", 3, "Node1"),
        (5002.0, "reboot", 4, "vm"),
        (5004.0, "on", 6, "vm"),
    ]


def test_reading_stops_at_the_first_record_older_than_the_hour(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    with trail.open("w") as fh:
        for i in range(20_000):
            fh.write(record(float(i), "off" if i % 2 else "status", i))
    # Small blocks: lines cut at block boundaries are joined again.
    got = handled_power_actions(str(trail), since=19_990.0, block=997)
    assert [seqno for _, _, seqno, _ in got] == [19_991, 19_993, 19_995, 19_997, 19_999]


def test_the_read_is_bounded(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    with trail.open("w") as fh:
        for i in range(10_000):
            fh.write(record(1_000_000.0 + i, "off", i))
    got = handled_power_actions(str(trail), since=0.0, max_bytes=64 * 1024, block=4096)
    assert 0 < len(got) < 10_000
    assert got[-1][2] == 9_999  # the newest records are the ones read


def test_missing_fifo_or_directory_gives_nothing_without_hanging(tmp_path: Path) -> None:
    assert handled_power_actions(str(tmp_path / "absent"), since=0.0) == []
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert handled_power_actions(str(fifo), since=0.0) == []
    assert handled_power_actions(str(tmp_path), since=0.0) == []
