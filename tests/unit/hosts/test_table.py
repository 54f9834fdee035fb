"""The group's table: fed by views and inventories, it remembers where VMs ran after their
host left, teaches a newcomer what it missed, and stays bounded."""

from __future__ import annotations

import pytest

from xvmd.backend import DomainState
from xvmd.hosts import table as table_module
from xvmd.hosts.messages import Departed, DeviceTag, DomainRecord, Inventory
from xvmd.hosts.table import Table, Where

F1 = "1111111111111111"
A, B = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
RUN, OFF = DomainState.RUNNING, DomainState.SHUTOFF


def inv(
    node: int, *domains: tuple[str, str, DomainState], departed: tuple[Departed, ...] = ()
) -> Inventory:
    records = tuple(DomainRecord(n, u, s) for n, u, s in domains)
    return Inventory(node, f"h{node}", 1, (DeviceTag("xvm", F1),), records, departed)


def test_an_inventory_from_a_host_that_is_not_a_member_is_ignored() -> None:
    t = Table()
    t.membership([1])
    assert not t.inventory(inv(2, ("a", A, RUN)))
    assert t.where("a") == Where((), (), (), False)
    assert t.pending == (1,)


def test_a_host_that_leaves_takes_its_inventory_but_not_where_its_vms_ran() -> None:
    t = Table()
    t.membership([1, 2])
    t.inventory(inv(1, ("a", A, RUN), ("b", B, OFF)))
    t.inventory(inv(2))
    t.membership([2])
    assert t.inventories() == (inv(2),)
    assert t.where("a") == Where((), (), (1,), True)
    assert t.where("b") == Where((), (), (), True)  # shut off when its host left: not "may run"
    assert t.departed() == (Departed("a", A, 1),)


def test_a_vm_its_host_stops_is_no_longer_placed_there() -> None:
    t = Table()
    t.membership([1])
    t.inventory(inv(1, ("a", A, RUN)))
    t.inventory(inv(1, ("a", A, OFF)))
    t.membership([])
    assert t.where("a").departed == ()


def test_what_others_say_of_hosts_that_are_away_is_believed() -> None:
    t = Table()
    t.membership([3])
    t.inventory(inv(3, ("b", B, OFF)))  # this host saw b shut off itself
    claims = (Departed("a", A, 1), Departed("b", B, 1))
    t.membership([2, 3])
    t.inventory(inv(2, departed=claims))
    assert t.where("a").departed == (1,)  # news: believed
    # b ran on host 1 while this host was cut off, perhaps: believed too, it only makes
    # the answers more careful
    assert t.where("b").departed == (1,)


def test_a_claim_about_a_host_that_is_back_and_published_is_not_believed() -> None:
    t = Table()
    t.membership([1, 2])
    t.inventory(inv(1))
    t.inventory(inv(2, departed=(Departed("a", A, 1),)))
    assert t.where("a") == Where((), (), (), False)


def test_union_lists_each_domain_once_with_the_state_where_it_runs() -> None:
    t = Table()
    t.membership([1, 2])
    t.inventory(inv(1, ("a", A, OFF), ("b", B, RUN)))
    t.inventory(inv(2, ("a", A, RUN)))
    assert t.union() == (DomainRecord("a", A, RUN), DomainRecord("b", B, RUN))


def test_memory_of_seen_vms_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "MAX_REMEMBERED", 2)
    t = Table()
    t.membership([1])
    uuids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(3)]
    for i, u in enumerate(uuids):
        t.inventory(inv(1, (f"vm{i}", u, OFF)))
    t.inventory(inv(1))
    assert [t.where(u).known for u in uuids] == [False, True, True]
