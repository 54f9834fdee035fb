"""The decision rule over the group's table: one responder, always a host that can
authenticate the client, and never "off" or "success" for a VM that may run somewhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvmd.backend import DomainState
from xvmd.hosts.decide import Decision, Route, decide
from xvmd.hosts.messages import (
    Departed,
    DeviceTag,
    DomainRecord,
    Inventory,
    ProofKind,
    ProofRecord,
)
from xvmd.hosts.table import Table
from xvmd.protocol.wire import Op, Result

F1, F2 = "1111111111111111", "2222222222222222"
UUIDS = {f"vm{i}": f"00000000-0000-4000-8000-{i:012d}" for i in range(6)}
ON, OFF, PAUSED = DomainState.RUNNING, DomainState.SHUTOFF, DomainState.PAUSED


def inv(node: int, keys: tuple[str, ...], serial: int = 1, **vms: DomainState) -> Inventory:
    devices = tuple(DeviceTag(f"xvm{k[0]}", k) for k in keys)
    domains = tuple(DomainRecord(name, UUIDS[name], state) for name, state in vms.items())
    return Inventory(node, f"host{node}", serial, devices, domains)


def table(*inventories: Inventory, members: tuple[int, ...] | None = None) -> Table:
    t = Table()
    t.membership(members if members is not None else [i.node for i in inventories])
    for i in inventories:
        t.inventory(i)
    return t


def ask(t: Table, op: Op, vm: str = "vm1", key: str = F1) -> Decision:
    return decide(t, op, vm, False, key)


# -- the rule, case by case ---------------------------------------------------------------------


def test_shared_key_the_owner_answers_whoever_is_fastest() -> None:
    t = table(inv(1, (F1,), vm2=ON), inv(2, (F1,), vm1=ON), inv(3, (F1,)))
    for op in (Op.STATUS, Op.OFF, Op.REBOOT, Op.ON):
        assert ask(t, op) == Decision(2, Route.ACT, (2,), why="active on one member")


def test_per_host_keys_the_device_host_forwards_to_where_the_vm_runs_now() -> None:
    t = table(inv(1, (F1,)), inv(2, (F2,), vm1=ON))  # vm1 migrated from host 1 to host 2
    assert ask(t, Op.OFF, key=F1) == Decision(1, Route.FORWARD, (2,), why="active on one member")
    assert ask(t, Op.OFF, key=F2).route is Route.ACT


def test_nobody_answers_a_key_no_member_serves() -> None:
    t = table(inv(1, (F1,), vm1=ON))
    assert ask(t, Op.STATUS, key=F2) == Decision(
        None, Route.NOBODY, why="no member serves a device with this key"
    )


def test_mid_migration_off_must_reach_every_copy() -> None:
    t = table(inv(1, (F1,), vm1=PAUSED), inv(2, (F1,), vm1=ON), inv(3, (F1,)))
    off = ask(t, Op.OFF)
    assert (off.responder, off.route, off.hosts) == (1, Route.EVERYWHERE, (1, 2))
    assert ask(t, Op.REBOOT).route is Route.EVERYWHERE
    assert ask(t, Op.STATUS) == Decision(1, Route.ACT, (1,), why="active on several members")


def test_mid_migration_with_owners_that_cannot_authenticate() -> None:
    t = table(inv(1, (F2,), vm1=ON), inv(2, (F2,), vm1=ON), inv(3, (F1,)))
    off = ask(t, Op.OFF)
    assert (off.responder, off.route, off.hosts) == (3, Route.EVERYWHERE, (1, 2))
    assert ask(t, Op.STATUS) == Decision(3, Route.FORWARD, (1,), why="active on several members")


def test_a_stale_shut_off_copy_never_answers_for_the_running_one() -> None:
    t = table(inv(1, (F1,), vm1=OFF), inv(2, (F1,), vm1=ON))
    assert ask(t, Op.OFF).hosts == (2,)
    assert ask(t, Op.STATUS).hosts == (2,)


def test_shut_off_everywhere_goes_to_a_host_that_defines_it() -> None:
    t = table(inv(1, (F1,)), inv(2, (F1,), vm1=OFF), inv(3, (F1,), vm1=OFF))
    expected = Decision(2, Route.ACT, (2,), why="shut off; its host answers")
    assert ask(t, Op.STATUS) == ask(t, Op.OFF) == ask(t, Op.ON) == expected


def test_known_nowhere_is_never_assumed_dead() -> None:
    t = table(inv(1, (F1,)), inv(2, (F1,), vm2=ON))
    assert ask(t, Op.STATUS).result is Result.OFF
    for op in (Op.OFF, Op.REBOOT, Op.ON):
        d = ask(t, op)
        assert (d.responder, d.route, d.result) == (1, Route.ANSWER, Result.FAIL)
        assert "never assumed dead" in d.why


def test_once_seen_then_undefined_everywhere_is_off() -> None:
    t = table(inv(1, (F1,), vm1=OFF), inv(2, (F1,)))
    t.inventory(inv(1, (F1,), serial=2))  # vm1 undefined on host 1
    assert ask(t, Op.STATUS).result is Result.OFF
    assert ask(t, Op.OFF).result is Result.SUCCESS
    assert ask(t, Op.ON).result is Result.FAIL
    assert ask(t, Op.REBOOT).result is Result.FAIL


def test_a_vm_of_a_host_that_left_is_neither_off_nor_fenced() -> None:
    t = table(inv(1, (F1,)), inv(2, (F1,), vm1=ON), inv(3, (F1,), vm1=OFF))
    t.membership([1, 3])  # host 2 left: vm1 may still run there
    for op in (Op.STATUS, Op.OFF, Op.REBOOT, Op.ON):
        d = ask(t, op)
        assert (d.route, d.result, d.hosts) == (Route.ANSWER, Result.FAIL, (2,))
        assert "host 2" in d.why


def test_a_host_that_rejoins_speaks_for_its_vms_only_once_it_has_published() -> None:
    t = table(inv(1, (F1,)), inv(2, (F1,), vm1=ON))
    t.membership([1])
    t.membership([1, 2])
    assert ask(t, Op.OFF).result is Result.FAIL  # not published yet: still "may run there"
    t.inventory(inv(2, (F1,), serial=2, vm1=OFF))
    assert ask(t, Op.OFF) == Decision(2, Route.ACT, (2,), why="shut off; its host answers")


def test_a_copy_on_a_host_that_left_blocks_off_even_when_another_runs() -> None:
    t = table(inv(1, (F1,), vm1=ON), inv(2, (F1,), vm1=PAUSED))
    t.membership([1])
    assert ask(t, Op.OFF).result is Result.FAIL
    assert ask(t, Op.STATUS) == Decision(1, Route.ACT, (1,), why="active on one member")


def test_a_member_that_has_not_published_blocks_what_it_could_contradict() -> None:
    t = table(inv(1, (F1,), vm1=OFF), members=(1, 2))
    assert ask(t, Op.STATUS).result is Result.FAIL
    assert ask(t, Op.ON).result is Result.FAIL  # it may run on host 2: no second copy
    t2 = table(inv(1, (F1,), vm1=ON), members=(1, 2))
    assert ask(t2, Op.STATUS).route is Route.ACT  # it runs: true whatever host 2 holds
    assert ask(t2, Op.OFF).result is Result.FAIL


@pytest.mark.parametrize("op", [Op.NULL, Op.DEVSTATUS, Op.HOSTLIST])
def test_queries_without_a_domain_are_answered_by_the_lowest_candidate(op: Op) -> None:
    t = table(inv(3, (F1,)), inv(2, (F2,)), inv(5, (F1,)))
    assert ask(t, op).responder == 3


def test_by_uuid_and_uuid_only() -> None:
    t = table(inv(1, (F1,), vm1=ON))
    assert decide(t, Op.OFF, UUIDS["vm1"], True, F1).hosts == (1,)
    assert decide(t, Op.OFF, UUIDS["vm1"].upper(), False, F1).hosts == (1,)
    assert decide(t, Op.OFF, "vm1", True, F1).result is Result.FAIL  # a name is no UUID


# -- properties over generated tables -----------------------------------------------------------

NODES = [1, 2, 3, 4]
STATES = st.sampled_from([ON, OFF, PAUSED, DomainState.CRASHED])


@st.composite
def histories(draw: st.DrawFn) -> tuple[Table, dict[int, dict[str, DomainState]], set[int]]:
    """A table after some hosts published and some left; returns it, the ground truth (every
    host's domains, also of hosts that left), and the hosts that are members but silent."""
    truth: dict[int, dict[str, DomainState]] = {}
    t = Table()
    joined = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=4, unique=True))
    t.membership(joined)
    for node in joined:
        vms = draw(st.dictionaries(st.sampled_from(sorted(UUIDS)), STATES, max_size=4))
        keys = draw(st.sampled_from([(F1,), (F2,), (F1, F2)]))
        truth[node] = vms
        t.inventory(inv(node, keys, **vms))
    left = draw(st.lists(st.sampled_from(joined), max_size=2, unique=True))
    members = [n for n in joined if n not in left]
    t.membership(members)
    silent: set[int] = set()
    if draw(st.booleans()):
        newcomer = draw(st.sampled_from(NODES))
        if newcomer not in members:
            t.membership([*members, newcomer])
            silent.add(newcomer)  # joined, may run anything, has not said
            truth[newcomer] = draw(st.dictionaries(st.sampled_from(sorted(UUIDS)), STATES))
    return t, truth, silent


def _may_run(vm: str, truth: dict[int, dict[str, DomainState]]) -> bool:
    return any(vms.get(vm, OFF) is not OFF for vms in truth.values())


@settings(max_examples=400, deadline=None)
@given(
    histories(),
    st.sampled_from(list(Op)),
    st.sampled_from(sorted(UUIDS)),
    st.sampled_from([F1, F2]),
)
def test_never_off_or_fenced_while_it_may_run_and_one_responder_who_can_authenticate(
    history: tuple[Table, dict[int, dict[str, DomainState]], set[int]],
    op: Op,
    vm: str,
    key: str,
) -> None:
    t, truth, silent = history
    d = decide(t, op, vm, False, key)
    assert d == decide(t, op, vm, False, key)  # a function of the table alone
    candidates = t.candidates(key)
    if not candidates:
        assert d.route is Route.NOBODY and d.responder is None
        return
    assert d.responder in candidates  # it can authenticate the client
    claims_off = d.route is Route.ANSWER and (
        d.result is Result.OFF or (d.result is Result.SUCCESS and op is Op.OFF)
    )
    if claims_off:
        assert not _may_run(vm, truth), (d, truth)
    if d.route in (Route.ACT, Route.FORWARD) and op in (Op.OFF, Op.REBOOT) and op.needs_domain:
        # One host acts: it must be the only one that may run the VM.
        running = {n for n, vms in truth.items() if vms.get(vm, OFF) is not OFF}
        assert running <= set(d.hosts), (d, truth, silent)
    if d.route is Route.EVERYWHERE:
        running = {n for n, vms in truth.items() if vms.get(vm, OFF) is not OFF}
        assert running <= set(d.hosts)


# -- hosts that left, and proof that they are down ----------------------------------------------


def test_a_vm_of_a_host_that_left_is_fenced_once_that_host_is_proven_down() -> None:
    t = table(inv(1, (F1,)), inv(2, (F1,), vm1=ON))
    t.membership([1])
    off = ask(t, Op.OFF)
    assert off.result is Result.FAIL and "xvmd confirm-host-down host2" in off.why
    assert t.unproven() == (2,)
    t.prove(ProofRecord(2, ProofKind.OPERATOR, "confirmed by root"))
    assert t.unproven() == ()
    assert ask(t, Op.STATUS).result is Result.OFF
    assert ask(t, Op.OFF) == Decision(1, Route.ANSWER, (2,), Result.SUCCESS, PROVEN)
    reboot = ask(t, Op.REBOOT)
    assert reboot.result is Result.SUCCESS and "cannot be started again" in reboot.why
    assert ask(t, Op.ON).result is Result.FAIL


PROVEN = "host 2 (host2) is down: confirmed by root"


def test_a_proven_host_whose_vm_is_defined_elsewhere_lets_that_host_answer() -> None:
    t = table(inv(1, (F1,), vm1=OFF), inv(2, (F1,), vm1=ON))
    t.membership([1])
    t.prove(ProofRecord(2, ProofKind.FENCED, "fenced (reboot) at 12:00:03 by node1"))
    assert ask(t, Op.ON) == Decision(1, Route.ACT, (1,), why="shut off; its host answers")


def test_a_proof_counts_only_while_the_host_is_away() -> None:
    t = table(inv(1, (F1,)), inv(2, (F1,), vm1=ON))
    assert not t.prove(ProofRecord(2, ProofKind.OPERATOR, "x"))  # a member is not down
    t.membership([1])
    assert t.prove(ProofRecord(2, ProofKind.OPERATOR, "x"))
    t.membership([1, 2])  # it came back: the proof is void, its VMs wait for its inventory
    assert t.proof(2) is None
    assert ask(t, Op.OFF).result is Result.FAIL
    t.membership([1])
    assert ask(t, Op.OFF).result is Result.FAIL  # left again: needs a new proof


def test_a_proof_never_comes_from_an_inventory() -> None:
    proof = ProofRecord(2, ProofKind.FENCED, "fenced")
    t = Table()
    t.membership([1, 3])
    departed = (Departed("vm1", UUIDS["vm1"], 2),)
    t.inventory(Inventory(1, "host1", 1, (DeviceTag("xvm", F1),), (), departed, (proof,)))
    t.inventory(inv(3, (F1,)))  # this host, the newcomer
    assert t.proof(2) is None
    assert ask(t, Op.OFF).result is Result.FAIL  # until found again, or confirmed again


def test_a_stale_proof_from_a_partition_never_fences_a_host_that_came_back_and_went() -> None:
    """Host 2 is cut off holding a proof that host 3 is down; meanwhile host 3 comes back to
    host 1, starts vm1 and is cut off in turn. When host 2 heals, neither host may report vm1
    fenced on the strength of host 2's old proof (found by the randomized run, seed 1)."""
    proof = ProofRecord(3, ProofKind.OPERATOR, "confirmed")
    t1, t2 = Table(), Table()
    for t in (t1, t2):
        t.membership([1, 2])
        t.inventory(inv(1, (F1,), vm1=OFF))
        t.inventory(inv(2, (F1,)))
        t.prove(proof)
    t2.membership([2])
    t1.membership([1])
    t1.membership([1, 3])
    t1.inventory(inv(1, (F1,), vm1=OFF))
    t1.inventory(inv(3, (F1,), vm1=ON))
    t1.membership([1])  # host 3 cut off, vm1 running there
    for t in (t1, t2):
        t.membership([1, 2])  # host 2 heals and meets host 1
        t.inventory(Inventory(1, "host1", 9, (DeviceTag("xvm", F1),), (), t1.departed()))
        t.inventory(Inventory(2, "host2", 9, (DeviceTag("xvm", F1),), (), t2.departed()))
    for t in (t1, t2):
        for op in (Op.OFF, Op.REBOOT, Op.STATUS):
            d = decide(t, op, "vm1", False, F1)
            assert not (d.route is Route.ANSWER and d.result in (Result.SUCCESS, Result.OFF)), d


# -- safety over generated event orders ----------------------------------------------------------


VMS2 = ["vm1", "vm2"]


@st.composite
def event_orders(draw: st.DrawFn) -> list[tuple[str, int, str]]:
    kinds = ["start", "stop", "kill", "partition", "prove", "rejoin", "ask"]
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(kinds), st.sampled_from(NODES), st.sampled_from(["vm1", "vm2"])
            ),
            min_size=1,
            max_size=30,
        )
    )


class World:
    """The truth (what runs where, who is dead or cut off) and the table the group keeps of it,
    fed the way CPG feeds it: views, inventories of members that are alive, proofs."""

    def __init__(self) -> None:
        self.running: dict[int, set[str]] = {n: set() for n in NODES}
        self.defined: dict[int, set[str]] = {n: {"vm1", "vm2"} for n in NODES}
        self.dead: set[int] = set()
        self.members = set(NODES)
        self.table = Table()
        self.clock = 0.0
        self.view()
        for n in NODES:
            self.publish(n)

    def view(self) -> None:
        self.clock += 1
        self.table.membership(sorted(self.members), self.clock)

    def publish(self, n: int) -> None:
        vms = {v: (ON if v in self.running[n] else OFF) for v in self.defined[n]}
        self.table.inventory(inv(n, (F1,), **vms))

    def apply(self, kind: str, n: int, vm: str) -> None:
        if kind == "start" and n in self.members and not self.may_run(vm):
            self.running[n].add(vm)  # the guest cluster starts its node on one host only
            self.publish(n)
        elif kind == "stop" and n in self.members:
            self.running[n].discard(vm)
            self.publish(n)
        elif kind in ("kill", "partition") and n in self.members and len(self.members) > 1:
            self.members.discard(n)
            if kind == "kill":
                self.dead.add(n)
                self.running[n].clear()
            self.view()
        elif kind == "prove" and n not in self.members:
            self.dead.add(n)  # fencing a cut-off host makes it dead: that is what it proves
            self.running[n].clear()
            self.table.prove(ProofRecord(n, ProofKind.FENCED, "fenced"))
        elif kind == "rejoin" and n not in self.members:
            self.dead.discard(n)
            self.members.add(n)
            self.view()
            self.publish(n)

    def may_run(self, vm: str) -> bool:
        return any(vm in vms for vms in self.running.values())


@settings(max_examples=500, deadline=None)
@given(event_orders(), st.sampled_from([Op.OFF, Op.REBOOT, Op.STATUS]))
def test_never_fenced_while_it_may_run_whatever_the_order_of_events(
    events: list[tuple[str, int, str]], op: Op
) -> None:
    world = World()
    for kind, n, vm in events:
        world.apply(kind, n, vm)
        if kind != "ask":
            continue
        d = decide(world.table, op, vm, False, F1)
        running = {h for h, vms in world.running.items() if vm in vms}
        if d.route is Route.ANSWER and d.result in (Result.OFF, Result.SUCCESS):
            assert not running, (d, running, events)
        if op is not Op.STATUS and d.route in (Route.ACT, Route.FORWARD, Route.EVERYWHERE):
            assert running <= set(d.hosts), (d, running, events)  # every copy is reached
            assert set(d.hosts) <= world.members  # and only members are asked
