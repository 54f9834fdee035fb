"""The pure parts of xvmd/quorum (corotypes, status) and the binding's shape: no corosync needed."""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
import time

import pytest

from xvmd.quorum import Member, QuorumStatus
from xvmd.quorum import binding as cb
from xvmd.quorum.corotypes import (
    AF_INET,
    AF_INET6,
    CMAP_BINARY,
    CMAP_DOUBLE,
    CMAP_INT64,
    CMAP_STRING,
    CMAP_UINT8,
    CMAP_UINT32,
    CS_ERR_ACCESS,
    CS_ERR_LIBRARY,
    CS_ERR_NOT_EXIST,
    CS_ERR_QUEUE_FULL,
    CS_ERR_TRY_AGAIN,
    CS_OK,
    QUORUM_FREE,
    QUORUM_SET,
    ClusterConfig,
    CmapValue,
    CorosyncError,
    NodeConfig,
    VoteInfo,
    cs_error_name,
    decode_cmap_value,
    parse_nodelist,
    sockaddr_address,
    vote_flag_words,
)
from xvmd.quorum.status import (
    REASON_LOST,
    REASON_NO_LIBRARIES,
    REASON_QUORUM_FREE,
    REASON_STOPPED,
    Backoff,
    Observation,
    build_status,
    connect_failure_reason,
    disconnected_status,
    same_status,
    transition_message,
)

# --- cmap values and the nodelist -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_type", "raw", "expected"),
    [
        (CMAP_UINT32, struct.pack("=I", 3), 3),
        (CMAP_UINT8, b"\x01", 1),
        (CMAP_INT64, struct.pack("=q", -5), -5),
        (CMAP_DOUBLE, struct.pack("=d", 1.5), 1.5),
        (CMAP_STRING, b"node1\x00", "node1"),
        (CMAP_STRING, b"r(0) ip(127.0.0.1) \x00", "r(0) ip(127.0.0.1) "),
        (CMAP_BINARY, b"\x00\x01", b"\x00\x01"),
    ],
)
def test_decode_cmap_value(value_type: int, raw: bytes, expected: object) -> None:
    assert decode_cmap_value(value_type, raw) == expected


def test_decode_cmap_value_too_short() -> None:
    with pytest.raises(ValueError, match="needs 4 bytes"):
        decode_cmap_value(CMAP_UINT32, b"\x01")


def test_parse_nodelist_orders_by_position_and_links() -> None:
    values: dict[str, CmapValue] = {
        "nodelist.local_node_pos": 1,
        "nodelist.node.1.ring1_addr": "192.168.1.2",
        "nodelist.node.1.ring0_addr": "10.0.0.2",
        "nodelist.node.1.nodeid": 2,
        "nodelist.node.1.name": "b",
        "nodelist.node.0.ring0_addr": "a.example",
        "nodelist.node.0.nodeid": 7,
        "nodelist.node.10.ring0_addr": "10.0.0.9",  # no nodeid (udpu with auto ids)
        "nodelist.node.2.name": "",
        "nodelist.node.2.nodeid": 0,
        "nodelist.node.x.name": "ignored",
        "nodelist.node.0.extra.deep": "ignored",
        "totem.cluster_name": "ignored",
    }
    cluster = parse_nodelist(values)
    assert cluster.nodes == (
        NodeConfig(0, 7, None, ("a.example",)),
        NodeConfig(1, 2, "b", ("10.0.0.2", "192.168.1.2")),
        NodeConfig(2, None, None, ()),
        NodeConfig(10, None, None, ("10.0.0.9",)),
    )
    assert cluster.local_nodeid == 2
    assert cluster.name is None


def test_parse_nodelist_empty() -> None:
    assert parse_nodelist({}) == ClusterConfig()


# --- addresses from libcfg --------------------------------------------------------------------


def sockaddr_in(ip: str) -> bytes:
    family = struct.pack("=H", socket.AF_INET)
    return (family + struct.pack("!H", 5405) + socket.inet_aton(ip)).ljust(28, b"\0")


def sockaddr_in6(ip: str) -> bytes:
    family = struct.pack("=H", socket.AF_INET6)
    body = struct.pack("!HI", 5405, 0) + socket.inet_pton(socket.AF_INET6, ip) + b"\0" * 4
    return family + body


def test_sockaddr_address() -> None:
    assert sockaddr_address(sockaddr_in("10.77.0.3")) == "10.77.0.3"
    assert sockaddr_address(sockaddr_in6("fd00::1")) == "fd00::1"
    assert sockaddr_address(sockaddr_in6("::ffff:10.0.0.1")) == "10.0.0.1"
    assert sockaddr_address(b"\0" * 28) is None  # AF_UNSPEC: unused slot
    assert sockaddr_address(b"\x02") is None


def test_address_families_are_the_platform_ones() -> None:
    assert (AF_INET, AF_INET6) == (socket.AF_INET, socket.AF_INET6)


# --- the binding --------------------------------------------------------------------------------


def test_ctypes_structs_match_the_c_layout() -> None:
    assert ctypes.sizeof(cb.VotequorumInfo) == 292
    assert ctypes.sizeof(cb.CfgNodeAddress) == 32
    assert ctypes.sizeof(cb.QuorumCallbacks) == ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(cb.VotequorumCallbacks) == 3 * ctypes.sizeof(ctypes.c_void_p)


def test_missing_libraries_raise_oserror() -> None:
    with pytest.raises(OSError):
        cb.CtypesCorosync({**cb.SONAMES, "quorum": "libquorum-not-here.so.99"})


def test_a_busy_call_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleeping(_seconds: float) -> None:
        raise AssertionError("the binding slept")

    monkeypatch.setattr(time, "sleep", no_sleeping)
    answers = [CS_ERR_TRY_AGAIN, CS_OK]

    def c_function(*_args: object) -> int:
        return answers.pop(0)

    with pytest.raises(CorosyncError) as raised:
        cb.cs_call("quorum_getquorate", c_function, 1)
    assert raised.value.busy and raised.value.code == CS_ERR_TRY_AGAIN
    assert answers == [CS_OK]  # asked once, not again
    cb.cs_call("quorum_getquorate", c_function, 1)


# --- errors and reasons -----------------------------------------------------------------------


def test_cs_error_name() -> None:
    assert cs_error_name(2) == "CS_ERR_LIBRARY"
    assert cs_error_name(100) == "CS_ERR_SECURITY"
    assert cs_error_name(77) == "CS_ERR_77"
    assert str(CorosyncError("quorum_initialize", 6)) == "quorum_initialize: CS_ERR_TRY_AGAIN"


def test_busy_errors() -> None:
    assert CorosyncError("x", CS_ERR_TRY_AGAIN).busy
    assert CorosyncError("x", CS_ERR_QUEUE_FULL).busy
    assert not CorosyncError("x", CS_ERR_LIBRARY).busy


def test_connect_failure_reason() -> None:
    assert connect_failure_reason(CS_ERR_LIBRARY, was_connected=True) == REASON_LOST
    first = connect_failure_reason(CS_ERR_LIBRARY, was_connected=False)
    assert first.startswith("corosync is not running") and "CS_ERR_LIBRARY" in first
    denied = connect_failure_reason(CS_ERR_ACCESS, was_connected=False)
    assert "root" in denied and "uidgid" in denied
    other = connect_failure_reason(CS_ERR_NOT_EXIST, was_connected=True)
    assert other == "cannot connect to corosync (CS_ERR_NOT_EXIST); retrying"


def test_vote_flag_words() -> None:
    assert vote_flag_words(0) == ""
    assert vote_flag_words(2 | 4) == "Quorate WaitForAll"


# --- building the status ----------------------------------------------------------------------

CLUSTER = ClusterConfig(
    name="c1",
    nodes=(
        NodeConfig(0, 1, "node1", ("10.0.0.1",)),
        NodeConfig(1, 2, "node2", ("node2.example", "192.168.0.2")),
        NodeConfig(2, 3, None, ("10.0.0.3",)),
    ),
    local_nodeid=1,
)
VOTE = VoteInfo(node_id=1, expected_votes=3, highest_expected=3, total_votes=3, quorum=2, flags=2)


def test_build_status_quorate() -> None:
    obs = Observation(
        quorum_type=QUORUM_SET,
        quorate=True,
        ring_seq=20,
        view=(3, 1, 2),
        vote=VOTE,
        cluster=CLUSTER,
        addresses={1: ("10.0.0.1",), 2: ("10.0.0.2", "192.168.0.2")},
        local_nodeid=1,
    )
    status = build_status(obs, now=123.0)
    assert status.connected and status.quorate and status.quorum_set
    assert status.reason == "quorate"
    assert status.members == (
        Member(1, "node1", ("10.0.0.1",)),
        Member(2, "node2", ("10.0.0.2", "192.168.0.2")),  # libcfg's resolved addresses win
        Member(3, None, ("10.0.0.3",)),  # no libcfg answer: the configured ring addresses
    )
    assert status.ring_id == (1, 20)
    assert (status.expected_votes, status.total_votes, status.quorum) == (3, 3, 2)
    assert status.cluster_name == "c1"
    assert status.local_nodeid == 1
    assert status.changed_at == 123.0
    assert status.extra == {"votequorum_flags": "Quorate", "highest_expected": "3"}


def test_build_status_unknown_member_has_no_name() -> None:
    status = build_status(Observation(QUORUM_SET, True, 5, (9,), cluster=CLUSTER), 0.0)
    assert status.members == (Member(9),)


def test_build_status_not_quorate_says_why_in_votes() -> None:
    vote = VoteInfo(node_id=3, expected_votes=3, total_votes=1, quorum=2)
    status = build_status(Observation(QUORUM_SET, False, 30, (3,), vote=vote), 0.0)
    assert not status.quorate and status.connected
    assert status.reason == (
        "this partition is not quorate (1 of 3 expected votes, 2 needed): fencing refused"
    )
    assert status.local_nodeid == 3  # from votequorum when libcfg did not say
    assert status.ring_id == (3, 30)


def test_build_status_not_quorate_without_votequorum() -> None:
    status = build_status(Observation(QUORUM_SET, False, 30, (3,)), 0.0)
    assert status.reason == "this partition is not quorate: fencing refused"
    assert status.expected_votes is None


def test_build_status_quorum_free_is_never_quorate() -> None:
    status = build_status(Observation(QUORUM_FREE, True, 5, (1,), cluster=CLUSTER), 0.0)
    assert status.connected and not status.quorate and not status.quorum_set
    assert status.reason == REASON_QUORUM_FREE
    assert status.local_nodeid == 1  # from nodelist.local_node_pos


def test_build_status_quorate_without_membership_is_refused() -> None:
    for view in (None, ()):
        status = build_status(Observation(QUORUM_SET, True, None, view), 0.0)
        assert not status.quorate
        assert "no membership yet" in status.reason
        assert status.ring_id is None


def test_disconnected_status_keeps_identity() -> None:
    before = build_status(Observation(QUORUM_SET, True, 5, (1,), cluster=CLUSTER), 0.0)
    down = disconnected_status(REASON_LOST, 9.0, before)
    assert (down.connected, down.quorate, down.reason) == (False, False, REASON_LOST)
    assert (down.cluster_name, down.local_nodeid, down.members) == ("c1", 1, ())
    assert disconnected_status(REASON_LOST, 9.0).cluster_name is None


def test_same_status_ignores_the_timestamp() -> None:
    a = build_status(Observation(QUORUM_SET, True, 5, (1,)), 1.0)
    assert same_status(a, build_status(Observation(QUORUM_SET, True, 5, (1,)), 2.0))
    assert not same_status(a, build_status(Observation(QUORUM_SET, True, 6, (1,)), 1.0))


# --- what gets logged -------------------------------------------------------------------------


def status(
    quorate: bool = True, view: tuple[int, ...] = (1, 2), vote: VoteInfo | None = VOTE
) -> QuorumStatus:
    return build_status(Observation(QUORUM_SET, quorate, 5, view, vote=vote, cluster=CLUSTER), 0.0)


def test_transition_to_quorate_is_info_with_members_and_votes() -> None:
    start = disconnected_status("corosync is not running (cannot connect); retrying", 0.0)
    level, text = transition_message(start, status()) or (0, "")
    assert level == logging.INFO
    assert text == (
        "corosync cluster c1 is quorate (2 members: 1 (node1), 2 (node2), 3/3 votes, quorum 2)"
    )


def test_transition_to_not_quorate_is_a_warning() -> None:
    vote = VoteInfo(node_id=1, expected_votes=3, total_votes=1, quorum=2)
    level, text = transition_message(status(), status(False, (1,), vote)) or (0, "")
    assert level == logging.WARNING
    assert "corosync cluster c1: this partition is not quorate (1 of 3" in text
    assert "1 member: 1 (node1)" in text


def test_transition_lost_and_no_libraries_and_free_and_stopped() -> None:
    up = status()
    lost = disconnected_status(REASON_LOST, 0.0, up)
    assert transition_message(up, lost) == (
        logging.WARNING,
        f"{REASON_LOST} (fencing refused meanwhile)",
    )
    nolib = disconnected_status(REASON_NO_LIBRARIES, 0.0)
    assert transition_message(lost, nolib) == (
        logging.ERROR,
        f"{REASON_NO_LIBRARIES}: fencing refused",
    )
    free = build_status(Observation(QUORUM_FREE, True, 5, (1,)), 0.0)
    assert transition_message(lost, free) == (logging.ERROR, REASON_QUORUM_FREE)
    stopped = disconnected_status(REASON_STOPPED, 0.0, up)
    assert transition_message(up, stopped) == (logging.INFO, REASON_STOPPED)


def test_no_log_line_for_the_same_state() -> None:
    lost = disconnected_status(REASON_LOST, 1.0)
    assert transition_message(lost, disconnected_status(REASON_LOST, 2.0)) is None
    assert transition_message(status(), status()) is None


def test_membership_change_is_info_and_vote_detail_alone_is_quiet() -> None:
    level, text = transition_message(status(view=(1, 2)), status(view=(1, 2, 3))) or (0, "")
    assert level == logging.INFO
    assert text == (
        "corosync cluster c1 membership changed, quorate (3 members: 1 (node1), 2 (node2), 3)"
    )
    a = status(False, (1,), VoteInfo(node_id=1, expected_votes=3, total_votes=1, quorum=2))
    b = status(False, (1,), VoteInfo(node_id=1, expected_votes=4, total_votes=1, quorum=3))
    assert transition_message(a, b) is None


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.2, 5.0)
    delays = [backoff.next() for _ in range(8)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    backoff.reset()
    assert backoff.next() == 0.2
