"""ccs.reload.decide: which loaded configuration replaces the running one, as a typed verdict."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ccs import load_bytes
from ccs.load import Snapshot
from ccs.reload import Verdict, decide
from tests.unit.ccs.cases import stage_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    stage_tree(tmp_path)
    return tmp_path / "ccs" / "two-host.conf"


def _load(conf: Path, text: str) -> Snapshot | None:
    return load_bytes(text.encode(), str(conf)).snapshot


def _running(conf: Path) -> tuple[Snapshot, str]:
    text = conf.read_text()
    snap = _load(conf, text)
    assert snap is not None
    return snap, text


def test_the_same_file_changes_nothing(tree: Path) -> None:
    running, text = _running(tree)
    d = decide(running, load_bytes(text.encode(), str(tree)))
    assert (d.verdict, d.snapshot, d.verdict.applies) == (Verdict.UNCHANGED, None, False)


def test_a_bumped_edit_is_applied(tree: Path) -> None:
    running, text = _running(tree)
    d = decide(running, load_bytes(text.replace('"7"', '"8"', 1).encode(), str(tree)))
    assert d.verdict is Verdict.EDIT and d.verdict.applies
    assert d.snapshot is not None and d.snapshot.version == 8
    assert "config_version 7 -> 8" in d.summary


def test_an_edit_without_a_bump_is_ignored(tree: Path) -> None:
    running, text = _running(tree)
    edited = text.replace('name="1"', 'name="primary"', 1)
    assert edited != text
    d = decide(running, load_bytes(edited.encode(), str(tree)))
    assert (d.verdict, d.snapshot) == (Verdict.NOT_BUMPED, None)


def test_errors_reject_with_their_problems(tree: Path) -> None:
    running, text = _running(tree)
    broken = text.replace('"7"', '"9"', 1).replace('nodeid="2"', 'nodeid="1"')
    d = decide(running, load_bytes(broken.encode(), str(tree)))
    assert (d.verdict, d.snapshot) == (Verdict.REJECTED, None)
    assert [str(p.code) for p in d.problems] == ["duplicate-nodeid"]


def test_a_rotated_key_is_applied_without_a_bump(tree: Path) -> None:
    running, text = _running(tree)
    key = tree.parent.parent / "keys" / "host1.key"
    key.write_bytes(os.urandom(256))
    d = decide(running, load_bytes(text.encode(), str(tree)))
    assert d.verdict is Verdict.KEYS and d.snapshot is not None
