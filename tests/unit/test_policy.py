"""Policy: request targets -> what to look up and how, and which domains a device may reach.

Node names fold case (they are host names); VM names compare exactly, as libvirt's names do;
UUIDs compare in any case. A guest cluster must never reach another tenant's ``Tenant-Web``
because its own node's VM is called ``tenant-web``.
"""

from __future__ import annotations

from ccs.model import FenceDevice
from ccs.validate import NodeTarget, ServedDevice
from xvmd.backend import DomainInfo, DomainState
from xvmd.core.policy import Mapped, Policy, Refused, Scope
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import HostRecord

RUN = DomainState.RUNNING
U2 = "00000002-0000-4000-8000-5eed00000002"  # a VM string that is also another domain's UUID
UPPER = "ABCDEF01-0000-4000-8000-5EED0000000A"


def node(name: str, nodeid: int, vm: str, use_uuid: bool = False) -> NodeTarget:
    return NodeTarget(name, nodeid, (name, f"{name}-ring1"), vm, use_uuid, nodeid)


NODES = (
    node("n3", 3, "tenant-web"),
    node("n5", 5, U2),
    node("n6", 6, UPPER, use_uuid=True),
)


def policy(*nodes: NodeTarget) -> tuple[Policy, Key]:
    key = Key(b"k" * 32)
    sd = ServedDevice(FenceDevice("xvm", "fence_xvm", {}, 1), key.data, nodes or NODES)
    return Policy((key,), {id(key): Scope.of([sd])}, Scope.of([sd]), "c", 1), key


def mapped(target: str) -> Mapped:
    pol, key = policy()
    out = pol.map(key, target)
    assert isinstance(out, Mapped), out
    return out


def dom(name: str, uuid: str) -> DomainInfo:
    return DomainInfo(name, uuid, RUN)


def test_node_names_fold_case_and_look_up_the_vm_as_the_map_writes_it() -> None:
    for target in ("n3", "N3", "N3-RING1"):
        m = mapped(target)
        assert (m.domain, m.exact, m.uuid_only) == ("tenant-web", True, False)
        assert m.node is not None and m.node.node == "n3"


def test_vm_names_match_exactly() -> None:
    pol, key = policy()
    assert mapped("tenant-web").domain == "tenant-web"
    assert isinstance(pol.map(key, "Tenant-Web"), Refused)
    assert isinstance(pol.map(key, "TENANT-WEB"), Refused)


def test_scope_holds_only_the_exact_name() -> None:
    pol, key = policy()
    scope = pol.scope_for(key)
    assert scope is not None
    assert scope.holds(dom("tenant-web", "c0000009-0000-4000-8000-5eed00000009")) is not None
    other_tenant = dom("Tenant-Web", "c0000002-0000-4000-8000-5eed00000002")
    assert scope.holds(other_tenant) is None
    assert mapped("n3").allows(other_tenant) is False
    assert mapped("n3").allows(None) is True  # the node's VM is absent: answered as usual


def test_uuid_shaped_vm_matches_name_and_uuid_and_says_so() -> None:
    m = mapped("n5")
    assert (m.domain, m.exact, m.uuid_only) == (U2, True, False)
    scope = m.scope
    assert scope is not None
    assert scope.holds(dom("victim", U2)) is not None  # the domain with that UUID
    assert scope.holds(dom(U2, "c0000003-0000-4000-8000-5eed00000003")) is not None  # named so
    assert mapped(U2.upper()).domain == U2  # UUIDs compare in any case


def test_use_uuid_vm_is_a_uuid_only() -> None:
    m = mapped("n6")
    assert (m.domain, m.exact, m.uuid_only) == (UPPER, True, True)
    assert mapped(UPPER.lower()).node == m.node
    scope = m.scope
    assert scope is not None
    assert scope.holds(dom("whatever", UPPER.lower())) is not None
    assert scope.holds(dom(UPPER, "c0000004-0000-4000-8000-5eed00000004")) is None


def test_an_unknown_uuid_is_looked_up_by_uuid_and_checked_afterwards() -> None:
    wanted = "c0000007-0000-4000-8000-5eed00000007"
    m = mapped(wanted)
    assert (m.domain, m.node, m.exact, m.uuid_only) == (wanted, None, True, True)
    assert m.allows(dom("tenant-web", wanted)) is True  # n3's VM, named through its UUID
    assert m.allows(dom("Tenant-Web", wanted)) is False
    assert m.allows(None) is False


def test_hostlist_shows_only_the_exact_vms() -> None:
    pol, key = policy()
    records = [
        HostRecord("tenant-web", "c0000001-0000-4000-8000-5eed00000001", 1),
        HostRecord("Tenant-Web", "c0000002-0000-4000-8000-5eed00000002", 1),
        HostRecord("victim", U2, 1),
        HostRecord(U2, "c0000003-0000-4000-8000-5eed00000003", 1),
        HostRecord("by-uuid", UPPER.lower(), 1),
        HostRecord(UPPER, "c0000004-0000-4000-8000-5eed00000004", 1),
    ]
    shown = [r.name for r in pol.hostlist(key, records)]
    assert shown == ["tenant-web", "victim", U2, "by-uuid"]


def test_unrestricted_policy_keeps_the_loose_lookup() -> None:
    key = Key(b"k" * 32)
    pol = Policy.unrestricted([key])
    m = pol.map(key, "Tenant-Web")
    assert m == Mapped("Tenant-Web", None, None)
    assert isinstance(m, Mapped) and not m.exact and not m.uuid_only
    assert m.allows(dom("Tenant-Web", U2)) is True
    records = [HostRecord("Tenant-Web", U2, 1)]
    assert pol.hostlist(key, records) == records
