"""The placement memory on disk: a restart keeps "last seen on host 2", a bad file is set
aside (never lost, never trusted), and writes are atomic and only after a change."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from xvmd.backend import DomainState
from xvmd.daemon import paths
from xvmd.daemon.placestore import PlacementStore, StoreError, load, save
from xvmd.hosts.decide import decide
from xvmd.hosts.messages import DeviceTag, DomainRecord, Inventory
from xvmd.hosts.table import Table
from xvmd.protocol.wire import Op, Result

F1 = "1111111111111111"
A = "00000000-0000-4000-8000-00000000000a"


def seen_on_host2() -> Table:
    t = Table()
    t.membership([1, 2], 100.0)
    t.inventory(Inventory(1, "hv1", 1, (DeviceTag("xvm", F1),), ()))
    t.inventory(Inventory(2, "hv2", 1, (), (DomainRecord("vm-a", A, DomainState.RUNNING),)))
    t.membership([1], 200.0)  # host 2 left with vm-a running
    return t


def test_a_restart_still_knows_where_a_vm_was_last_seen(tmp_path: Path) -> None:
    path = str(tmp_path / "placements.json")

    async def scenario() -> Table:
        store = PlacementStore(path, seen_on_host2())
        await store.save_now()
        restarted = Table()
        await PlacementStore(path, restarted).restore()
        restarted.membership([1], 300.0)
        restarted.inventory(Inventory(1, "hv1", 2, (DeviceTag("xvm", F1),), ()))
        return restarted

    t = asyncio.run(scenario())
    assert t.where("vm-a").departed == (2,)
    assert (t.name_of(2), t.left_at(2)) == ("hv2", 200.0)
    off = decide(t, Op.OFF, "vm-a", False, F1)
    assert off.result is Result.FAIL and "host 2 (hv2)" in off.why  # not "known to no member"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_nothing_is_written_without_a_change(tmp_path: Path) -> None:
    path = tmp_path / "placements.json"

    async def scenario() -> list[bool]:
        t = seen_on_host2()
        store = PlacementStore(str(path), t)
        await store.restore()  # nothing there yet: the table as it is counts as saved
        written = [path.exists()]
        t.membership([1, 3], 300.0)
        await store.save_now()
        written.append(path.exists())
        path.unlink()
        await store.save_now()
        written.append(path.exists())
        return written

    assert asyncio.run(scenario()) == [False, True, False]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": 99}', b'{"version": 1, "active_at": 3}', b"[]"],
    ids=["garbage", "version", "shape", "list"],
)
def test_a_bad_file_is_set_aside_and_the_daemon_starts_empty(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "placements.json"
    path.write_bytes(content)

    async def scenario() -> Table:
        t = Table()
        await PlacementStore(str(path), t).restore()
        return t

    t = asyncio.run(scenario())
    assert t.where("vm-a").known is False
    assert (tmp_path / "placements.json.bad").read_bytes() == content
    assert not path.exists()
    assert "starting without it (kept as" in caplog.text


def test_save_is_atomic_and_load_reads_it_back(tmp_path: Path) -> None:
    path = str(tmp_path / "p.json")
    save(path, {"active_at": [], "seen": [], "names": {}, "left_at": {}})
    assert not os.path.exists(path + ".tmp")
    assert load(path) == {"version": 1, "active_at": [], "seen": [], "names": {}, "left_at": {}}
    assert load(str(tmp_path / "none.json")) is None
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(StoreError, match="cannot read"):
        load(str(tmp_path / "dir.json"))


def test_an_unwritable_state_directory_is_reported_once_and_kept_trying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing-dir" / "placements.json"

    async def scenario() -> tuple[int, str | None, bool]:
        t = seen_on_host2()
        store = PlacementStore(str(path), t)
        await store.save_now()
        t.membership([1, 3], 300.0)
        await store.save_now()
        failures, error = store.failures, store.last_error
        path.parent.mkdir()
        await store.save_now()
        return failures, error, json.loads(path.read_text())["version"] == 1

    failures, error, written = asyncio.run(scenario())
    assert failures == 2 and error is not None and "cannot write" in error
    assert caplog.text.count("cannot write") == 1 and written


def test_the_state_path_lives_beside_the_audit_trail() -> None:
    assert paths.state_path("/srv/t/audit.jsonl", None, 1229) == "/srv/t/placements.json"
    assert paths.state_path("/srv/t/a.jsonl", "g1", 1229) == "/srv/t/placements-g1.json"
    assert paths.state_path(None, None, 1300).endswith("/placements-1300.json")
