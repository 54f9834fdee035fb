"""Intake: every no-I/O check before a connect-back, with an explicit clock (xvmd/core/intake.py).

The packets are real: encoded by ``wire.encode_request`` and signed by ``auth.sign_request``,
as the stock client does (fresh ``random`` bytes per copy, one seqno per run). The service's
part is played by hand: ``connected`` once a callback reached the client, ``all_callbacks_failed``
when none did, ``Ticket.release`` when the session ends.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

import ccs
from xvmd.core.addresses import callback_problem, sender
from xvmd.core.droplog import KEPT, Drop
from xvmd.core.intake import SETTLE, Intake, Proceed
from xvmd.core.limits import Limits, Ticket
from xvmd.core.policy import Policy
from xvmd.protocol.auth import Key, sign_request
from xvmd.protocol.history import DUPLICATE_WINDOW, History
from xvmd.protocol.replay import ReplayGuard
from xvmd.protocol.wire import FenceRequest, HashType, Op, encode_request, parse_request
from xvmd.quorum import QuorumStatus

KEY = Key(b"intake unit-test key one\n")
KEY2 = Key(b"intake unit-test key two\n")
OPEN = Policy.unrestricted([KEY])
QUORATE = QuorumStatus(True, True, "quorate", quorum_set=True)
INQUORATE = QuorumStatus(True, False, "the partition lost quorum", quorum_set=True)
CALLBACK = "192.0.2.1"
AFTER_WINDOW = DUPLICATE_WINDOW + 5.0  # later than any retransmit


def packet(
    op: Op = Op.OFF,
    *,
    seqno: int = 7,
    salt: bytes = b"\x01" * 6,
    address: str | None = CALLBACK,
    port: int = 1229,
    key: Key = KEY,
    hashtype: HashType = HashType.SHA256,
    domain: str = "vm-01",
) -> FenceRequest:
    """One signed datagram, parsed as the service parses it."""
    if hashtype is HashType.NONE:
        salt = b"\0" * 6
    raw = encode_request(
        op, domain, address=address, port=port, seqno=seqno, hashtype=hashtype, random=salt
    )
    return parse_request(sign_request(raw, hashtype, key))


def retransmit(
    req: FenceRequest, salt: bytes = b"\x02" * 6, address: str | None = None
) -> FenceRequest:
    """The stock client's next copy: same op, seqno and target, fresh random bytes (and, for a
    copy sent from another local address, another callback address)."""
    assert req.callback is not None
    where, port = req.callback
    return packet(
        req.op, seqno=req.seqno, salt=salt, domain=req.domain, address=address or where, port=port
    )


def intake(auth: HashType = HashType.SHA256, **limits: int) -> Intake:
    return Intake(auth, Limits(**limits))


def proceed(verdict: Proceed | Drop) -> Proceed:
    assert isinstance(verdict, Proceed), verdict
    return verdict


def dropped(verdict: Proceed | Ticket | Drop, reason: str) -> Drop:
    assert isinstance(verdict, Drop), verdict
    assert verdict.reason == reason, verdict
    return verdict


def served(i: Intake, req: FenceRequest, now: float, policy: Policy = OPEN) -> Proceed:
    """Admitted and called back successfully (the service's ``connected``)."""
    key = None if req.hashtype is HashType.NONE else KEY
    ok = proceed(i.datagram(req, key, policy, QUORATE, now))
    i.connected(req, ok, now + 0.1)
    return ok


# -- callback addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("fe80::1", "link-local"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("239.255.255.255", "multicast"),
        ("ff02::1", "multicast"),
        ("::ffff:224.0.0.12", "multicast"),
        ("febf::1", "link-local"),
    ],
)
def test_callback_problem_names_unusable_addresses(address: str, words: str) -> None:
    problem = callback_problem(ipaddress.ip_address(address).packed)
    assert problem is not None
    assert words in problem


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "192.0.2.1", "2001:db8::1", "::1", "10.0.0.1", "223.255.255.255", "fec0::1"],
)
def test_callback_problem_none_for_usable_addresses(address: str) -> None:
    assert callback_problem(ipaddress.ip_address(address).packed) is None


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "fe80::1", "::ffff:0.0.0.0"]
)
def test_bad_callback_is_dropped_before_anything_is_remembered(address: str) -> None:
    i = intake()
    req = packet(address=address)
    assert req.address == str(ipaddress.ip_address(address))
    drop = dropped(i.datagram(req, KEY, OPEN, QUORATE, 0.0), "bad-callback")
    assert drop.level == logging.WARNING
    assert drop.message is not None and req.address in drop.message
    assert len(i.replays) == 0 and len(i.history) == 0 and i.sessions.used == 0
    # A flood of them: one line per minute per address.
    assert dropped(i.datagram(req, KEY, OPEN, QUORATE, 1.0), "bad-callback").message is None


def test_no_callback_is_dropped() -> None:
    i = intake()
    drop = dropped(i.datagram(packet(address=None), KEY, OPEN, QUORATE, 0.0), "no-callback")
    assert drop.message is not None
    assert dropped(i.datagram(packet(port=0), KEY, OPEN, QUORATE, 0.0), "no-callback")


# -- replays ---------------------------------------------------------------------------------------


def test_exact_bytes_within_the_window_are_a_quiet_duplicate() -> None:
    i = intake()
    req = packet()
    served(i, req, 0.0)
    for now in (0.5, 5.0, DUPLICATE_WINDOW - 0.01):
        drop = dropped(i.datagram(req, KEY, OPEN, QUORATE, now), "duplicate")
        assert drop.message is None  # a network duplicate is no news


def test_exact_bytes_after_the_window_are_a_replay() -> None:
    i = intake()
    req = packet()
    served(i, req, 0.0)
    drop = dropped(i.datagram(req, KEY, OPEN, QUORATE, AFTER_WINDOW), "replayed")
    assert drop.level == logging.WARNING
    assert drop.message is not None
    assert "replayed" in drop.message and "seqno 7" in drop.message and CALLBACK in drop.message
    assert i.sessions.used == 1  # the replay took no session


def test_another_copy_of_a_handled_power_action_is_a_replay() -> None:
    """Captured on another interface (another callback address, other bytes): still refused."""
    i = intake()
    req = packet()
    served(i, req, 0.0)
    other = retransmit(req, address="198.51.100.7")
    drop = dropped(i.datagram(other, KEY, OPEN, QUORATE, 1800.0), "replayed")
    assert drop.message is not None and "198.51.100.7" in drop.message


def test_replays_are_refused_for_an_hour_only() -> None:
    i = intake()
    req = packet()
    served(i, req, 0.0)
    dropped(i.datagram(req, KEY, OPEN, QUORATE, 3599.0), "replayed")
    proceed(i.datagram(req, KEY, OPEN, QUORATE, 3601.0))


def test_a_replayed_status_is_refused_but_the_same_question_asked_again_is_not() -> None:
    """A replayed status whose callback reached the requester's client while it waited for
    another answer would give that client a wrong one: its exact bytes are refused too. Only
    power actions are remembered by their seqno, so a new packet with the same seqno is fine."""
    i = intake()
    req = packet(Op.STATUS)
    served(i, req, 0.0)
    assert len(i.replays) == 1
    dropped(i.datagram(req, KEY, OPEN, QUORATE, AFTER_WINDOW), "replayed")
    proceed(i.datagram(packet(Op.STATUS, salt=b"\5" * 6), KEY, OPEN, QUORATE, AFTER_WINDOW))


# -- quorum ----------------------------------------------------------------------------------------


def test_power_action_while_inquorate_is_dropped_and_recorded_once() -> None:
    i = intake()
    req = packet()
    drop = dropped(i.datagram(req, KEY, OPEN, INQUORATE, 0.0), "inquorate")
    assert drop.level == logging.WARNING and drop.record
    assert drop.message is not None and "quorum" in drop.message
    assert len(i.history) == 0  # not handled: the retransmit is welcome once quorum is back
    # The client's retransmit while still inquorate: same request, logged once only.
    again = dropped(i.datagram(retransmit(req), KEY, OPEN, INQUORATE, 2.0), "inquorate")
    assert again.message is None and not again.record


def test_bytes_first_seen_inquorate_are_never_acted_on_later() -> None:
    """A captured copy cannot be saved for a moment that suits the attacker."""
    i = intake()
    req = packet()
    dropped(i.datagram(req, KEY, OPEN, INQUORATE, 0.0), "inquorate")
    # Quorum is back: the same bytes are a duplicate within seconds, a replay after.
    dropped(i.datagram(req, KEY, OPEN, QUORATE, 5.0), "duplicate")
    drop = dropped(i.datagram(req, KEY, OPEN, QUORATE, 600.0), "replayed")
    assert drop.message is not None and drop.level == logging.WARNING
    assert i.sessions.used == 0


def test_a_retransmit_after_quorum_returns_is_admitted() -> None:
    i = intake()
    req = packet()
    dropped(i.datagram(req, KEY, OPEN, INQUORATE, 0.0), "inquorate")
    ok = proceed(i.datagram(retransmit(req), KEY, OPEN, QUORATE, 2.0))
    assert ok.session_key is KEY and ok.scope_key is KEY
    assert i.sessions.used == 1


@pytest.mark.parametrize("op", [Op.STATUS, Op.HOSTLIST, Op.NULL])
def test_non_power_requests_pass_while_inquorate(op: Op) -> None:
    proceed(intake().datagram(packet(op), KEY, OPEN, INQUORATE, 0.0))


def test_local_mode_checks_no_quorum() -> None:
    """``status`` None is ``--local``."""
    proceed(intake().datagram(packet(), KEY, OPEN, None, 0.0))


# -- which key answers -----------------------------------------------------------------------------


def test_unsigned_with_auth_none_proves_and_scopes_no_key() -> None:
    i = intake(auth=HashType.NONE)
    ok = proceed(i.datagram(packet(hashtype=HashType.NONE), None, OPEN, QUORATE, 0.0))
    assert (ok.session_key, ok.scope_key) == (None, None)


def test_signed_with_auth_none_keeps_its_key() -> None:
    ok = proceed(intake(auth=HashType.NONE).datagram(packet(), KEY, OPEN, QUORATE, 0.0))
    assert ok.session_key is KEY and ok.scope_key is KEY


def test_unsigned_with_one_key_uses_that_key_twice() -> None:
    i = intake(auth=HashType.SHA256)
    ok = proceed(i.datagram(packet(hashtype=HashType.NONE), None, OPEN, QUORATE, 0.0))
    assert ok.session_key is KEY and ok.scope_key is KEY


@pytest.mark.parametrize(
    ("keys", "reason"), [((KEY, KEY2), "unsigned-ambiguous"), ((), "no-key")], ids=["two", "none"]
)
def test_unsigned_without_exactly_one_key_is_dropped(keys: tuple[Key, ...], reason: str) -> None:
    i = intake(auth=HashType.SHA256)
    req = packet(hashtype=HashType.NONE)
    drop = dropped(i.datagram(req, None, Policy.unrestricted(keys), QUORATE, 0.0), reason)
    assert drop.level == logging.WARNING
    assert drop.message is not None and "unsigned" in drop.message
    assert i.sessions.used == 0 and len(i.history) == 0


def test_unsigned_packets_are_never_fingerprinted() -> None:
    """Unsigned copies carry no random bytes: an honest retransmit is byte-identical."""
    i = intake(auth=HashType.NONE)
    req = packet(hashtype=HashType.NONE)
    proceed(i.datagram(req, None, OPEN, QUORATE, 0.0))
    i.all_callbacks_failed(req, 5.0)
    assert len(i.replays) == 0
    proceed(i.datagram(req, None, OPEN, QUORATE, 7.0))  # the identical retransmit is served


# -- requesters in cluster mode --------------------------------------------------------------------

MEMBER = "127.0.0.1"
FOREIGN = "192.0.2.66"


def literal_resolver(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """IP literals resolve to themselves, nothing else does (no DNS query leaves the machine)."""
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        try:
            out[name] = (str(ipaddress.ip_address(name)),)
        except ValueError:
            out[name] = ()
    return out


@pytest.fixture
def cluster(tmp_path: Path) -> Policy:
    """A one-node cluster whose node sends from 127.0.0.1 (an <altname>), fenced via "xvm"."""
    key_path = tmp_path / "host.key"
    key_path.write_bytes(os.urandom(256))
    key_path.chmod(0o600)
    conf = tmp_path / "cluster.conf"
    conf.write_text(
        '<cluster name="c" config_version="1"><clusternodes>'
        f'<clusternode name="n1" nodeid="1"><altname name="{MEMBER}"/><fence>'
        '<method name="1"><device name="xvm" port="vm-01"/></method></fence></clusternode>'
        '</clusternodes><fencedevices><fencedevice name="xvm" agent="fence_xvm" '
        f'key_file="{key_path}"/></fencedevices></cluster>'
    )
    snap = ccs.load(str(conf), None, literal_resolver).snapshot
    assert snap is not None
    policy = Policy.from_snapshot(snap)
    assert policy.requesters == {MEMBER: "n1"}
    return policy


def signed_for(
    policy: Policy, address: str, op: Op = Op.OFF, salt: bytes = b"\1" * 6
) -> FenceRequest:
    return packet(op, address=address, key=policy.keys[0], salt=salt)


def test_member_callback_is_admitted(cluster: Policy) -> None:
    ok = proceed(
        intake().datagram(signed_for(cluster, MEMBER), cluster.keys[0], cluster, QUORATE, 0.0)
    )
    assert ok.scope_key is cluster.keys[0]


def test_non_member_is_dropped_quietly_then_reported_once(cluster: Policy) -> None:
    i = intake()
    req = signed_for(cluster, FOREIGN)
    drop = dropped(i.datagram(req, cluster.keys[0], cluster, QUORATE, 10.0), "not-a-node")
    assert drop.message is None and not drop.record  # a node's other address may be served yet
    assert i.sessions.used == 0 and len(i.history) == 0
    assert i.overdue(10.0 + SETTLE - 0.01) == []  # still settling
    [(what, report)] = i.overdue(10.0 + SETTLE)
    assert what is req
    assert report.reason == "not-a-node" and report.record and report.level == logging.WARNING
    assert report.message is not None and FOREIGN in report.message
    assert FOREIGN in report.detail and "no node" in report.detail
    assert i.overdue(10.0 + 10 * SETTLE) == []  # reported once


def test_non_member_copy_is_not_reported_when_a_member_copy_was_served(cluster: Policy) -> None:
    """A node with several addresses sends a copy from each; one reached a node address."""
    i = intake()
    key = cluster.keys[0]
    foreign = signed_for(cluster, FOREIGN)
    member = signed_for(cluster, MEMBER, salt=b"\2" * 6)
    dropped(i.datagram(foreign, key, cluster, QUORATE, 0.0), "not-a-node")
    ok = proceed(i.datagram(member, key, cluster, QUORATE, 0.1))
    assert i.overdue(SETTLE + 1.0) == []
    i.connected(member, ok, 0.5)
    # A late foreign copy of the handled request is not queued at all.
    late = signed_for(cluster, FOREIGN, salt=b"\3" * 6)
    dropped(i.datagram(late, key, cluster, QUORATE, 1.0), "not-a-node")
    assert i.overdue(100.0) == []


def test_unrestricted_policy_checks_no_requester() -> None:
    proceed(intake().datagram(packet(address=FOREIGN), KEY, OPEN, QUORATE, 0.0))


# -- session quotas --------------------------------------------------------------------------------


def test_per_callback_quota_then_retransmit_after_a_release() -> None:
    i = intake(max_sessions=10, per_callback=2)
    tickets = [proceed(i.datagram(packet(seqno=n), KEY, OPEN, QUORATE, 0.0)).ticket for n in (1, 2)]
    third = packet(seqno=3)
    drop = dropped(i.datagram(third, KEY, OPEN, QUORATE, 0.1), "callback-busy")
    assert drop.level == logging.WARNING
    assert drop.message is not None and f"{CALLBACK} port 1229" in drop.message
    # Another port of the same host is another callback: the stock client listens on each.
    proceed(i.datagram(packet(seqno=4, port=2000), KEY, OPEN, QUORATE, 0.2))
    assert dropped(i.datagram(retransmit(third), KEY, OPEN, QUORATE, 1.0), "callback-busy")
    tickets[0].release()
    tickets[0].release()  # the service may release twice: still one place
    proceed(i.datagram(retransmit(third, salt=b"\3" * 6), KEY, OPEN, QUORATE, 2.0))
    assert dropped(i.datagram(packet(seqno=5), KEY, OPEN, QUORATE, 2.1), "callback-busy")


def test_total_quota_says_busy() -> None:
    i = intake(max_sessions=2, per_callback=2)
    proceed(i.datagram(packet(seqno=1, address="192.0.2.1"), KEY, OPEN, QUORATE, 0.0))
    ticket = proceed(
        i.datagram(packet(seqno=2, address="192.0.2.2"), KEY, OPEN, QUORATE, 0.0)
    ).ticket
    late = packet(seqno=3, address="192.0.2.3")
    drop = dropped(i.datagram(late, KEY, OPEN, QUORATE, 0.1), "busy")
    assert drop.level == logging.WARNING and drop.message is not None
    assert "too busy (2 sessions)" in drop.message
    ticket.release()
    proceed(i.datagram(retransmit(late), KEY, OPEN, QUORATE, 2.0))


# -- the TCP listener ------------------------------------------------------------------------------


def test_listener_quota_per_peer_and_in_all() -> None:
    i = intake(max_stream=3, per_peer=2)
    first = i.open_stream("127.0.0.1", 0.0)
    assert not isinstance(first, Drop)
    assert not isinstance(i.open_stream("127.0.0.1", 0.0), Drop)
    drop = dropped(i.open_stream("127.0.0.1", 0.0), "listener-peer-busy")
    assert drop.message is not None and "127.0.0.1" in drop.message
    assert not isinstance(i.open_stream("::1", 0.0), Drop)
    drop = dropped(i.open_stream("192.0.2.5", 0.0), "listener-busy")
    assert drop.message is not None and "full" in drop.message
    first.release()
    assert not isinstance(i.open_stream("192.0.2.5", 0.1), Drop)
    assert i.sessions.used == 0  # multicast never shares the listener's budget


def stream(i: Intake, req: FenceRequest, now: float, peer: str = "127.0.0.1") -> Proceed | Drop:
    ticket = i.open_stream(peer, now)
    assert not isinstance(ticket, Drop)
    verdict = i.stream(req, KEY, OPEN, QUORATE, now, peer, ticket)
    if isinstance(verdict, Drop):
        ticket.release()  # the service aborts the connection
    return verdict


def test_stream_duplicates_within_ten_seconds() -> None:
    i = intake()
    req = packet(address=None)  # fence_virt -T names no callback
    proceed(stream(i, req, 0.0))
    dropped(stream(i, req, 1.0), "duplicate")  # the same bytes on a second connection
    drop = dropped(stream(i, retransmit_stream(req), 2.0), "duplicate")
    assert drop.message is not None and drop.level == logging.INFO


def test_stream_replay_after_the_window() -> None:
    i = intake()
    req = packet(address=None)
    proceed(stream(i, req, 0.0))
    dropped(stream(i, req, AFTER_WINDOW), "replayed")
    dropped(stream(i, retransmit_stream(req), AFTER_WINDOW), "replayed")


def test_stream_status_replayed_is_refused_and_a_new_packet_is_served() -> None:
    i = intake()
    req = packet(Op.STATUS, address=None)
    proceed(stream(i, req, 0.0))
    dropped(stream(i, req, 5.0), "duplicate")
    dropped(stream(i, req, AFTER_WINDOW), "replayed")
    proceed(stream(i, packet(Op.STATUS, address=None, salt=b"\5" * 6), AFTER_WINDOW))


def test_stream_power_action_while_inquorate() -> None:
    i = intake()
    req = packet(address=None)
    ticket = i.open_stream("127.0.0.1", 0.0)
    assert not isinstance(ticket, Drop)
    dropped(i.stream(req, KEY, OPEN, INQUORATE, 0.0, "127.0.0.1", ticket), "inquorate")
    dropped(stream(i, req, 600.0), "replayed")
    proceed(stream(i, retransmit_stream(req), 600.0))


def retransmit_stream(req: FenceRequest) -> FenceRequest:
    return packet(req.op, seqno=req.seqno, salt=b"\x02" * 6, domain=req.domain, address=None)


# -- failed callbacks and alternates ---------------------------------------------------------------


def test_copy_from_another_address_is_kept_as_an_alternate() -> None:
    i = intake()
    req = packet()
    proceed(i.datagram(req, KEY, OPEN, QUORATE, 0.0))
    assert i.datagram(retransmit(req, address="198.51.100.7"), KEY, OPEN, QUORATE, 0.1) is KEPT
    assert i.sessions.used == 1  # the alternate is tried by the same session


def test_failed_callback_backs_off_then_the_retransmit_is_admitted() -> None:
    i = intake()
    req = packet()
    ok = proceed(i.datagram(req, KEY, OPEN, QUORATE, 0.0))
    line = i.callback_failed(req, CALLBACK, 1229, "connection refused", 5.0)
    assert line is not None and "connection refused" in line
    assert i.callback_failed(req, CALLBACK, 1229, "connection refused", 5.1) is None
    i.all_callbacks_failed(req, 5.0)
    ok.ticket.release()
    dropped(i.datagram(retransmit(req), KEY, OPEN, QUORATE, 5.5), "callback-backoff")
    proceed(i.datagram(retransmit(req, salt=b"\3" * 6), KEY, OPEN, QUORATE, 7.0))
    # The first copy's exact bytes were never acted on: they stay refused.
    dropped(i.datagram(req, KEY, OPEN, QUORATE, 600.0), "replayed")


# -- authentication failures -----------------------------------------------------------------------


def test_reflected_challenge_is_reported_as_an_attack() -> None:
    i = intake()
    req = packet()
    failure = "the client's challenge is one this daemon issued (reflection attack)"
    drop = i.auth_failed(req, CALLBACK, failure, True, 0.0)
    assert drop.reason == "reflection" and drop.result == "reflection"
    assert drop.level == logging.ERROR
    assert drop.message is not None and "reflection" in drop.message
    assert "ATTACK" in drop.message and CALLBACK in drop.message
    assert drop.record and "reflection" in drop.detail
    # A flood of them: one line (and one refusal record) per minute per source.
    again = i.auth_failed(req, CALLBACK, failure, True, 1.0)
    assert again.reason == "reflection" and again.message is None and not again.record


def test_wrong_answer_is_an_auth_failure() -> None:
    drop = intake().auth_failed(packet(), CALLBACK, "wrong answer", False, 0.0)
    assert drop.reason == "auth-failed" and drop.result == "auth-failed"
    assert drop.level == logging.WARNING
    assert drop.message is not None and "wrong answer" in drop.message
    assert "reflection" not in drop.message
    assert drop.record and drop.detail == "wrong answer"


# -- rate-limited logging --------------------------------------------------------------------------


def test_a_replay_flood_costs_one_line_then_a_summary() -> None:
    i = intake()
    req = packet()
    served(i, req, 0.0)
    start = 100.0
    drops = [i.datagram(req, KEY, OPEN, QUORATE, start + n / 1000) for n in range(1000)]
    assert all(isinstance(d, Drop) and d.reason == "replayed" for d in drops)
    assert sum(1 for d in drops if isinstance(d, Drop) and d.message is not None) == 1
    assert i.summaries(start + 30.0) == []  # not owed yet
    assert i.summaries(start + 61.0) == [f"replayed: 999 more from {CALLBACK} in the last 60 s"]
    assert i.summaries(start + 200.0) == []  # owed once
    # The next replay after the quiet spell is reported at once.
    assert dropped(i.datagram(req, KEY, OPEN, QUORATE, start + 300.0), "replayed").message


def test_flood_lines_are_per_source() -> None:
    i = intake()
    bad = [packet(address="0.0.0.0", seqno=n) for n in range(10)]
    bad += [packet(address="224.0.0.1", seqno=n) for n in range(10)]
    messages = [
        dropped(i.datagram(r, KEY, OPEN, QUORATE, 0.0), "bad-callback").message for r in bad
    ]
    assert sum(m is not None for m in messages) == 2  # one per callback address
    assert sorted(i.summaries(61.0)) == [
        "bad-callback: 9 more from 0.0.0.0 in the last 60 s",
        "bad-callback: 9 more from 224.0.0.1 in the last 60 s",
    ]


# -- every copy of a power request counts ------------------------------------------------------
# Copies dropped as duplicates (while the first copy is pending) or during the back-off are
# remembered too: if every callback of the request then fails, History forgets it after the
# back-off, and a captured copy replayed later must still be refused.


def test_a_copy_seen_while_pending_is_refused_when_replayed_after_a_failed_callback() -> None:
    i = intake()
    first, copy = packet(salt=b"\1" * 6), packet(salt=b"\2" * 6)  # the client's retransmit
    ok = proceed(i.datagram(first, KEY, OPEN, QUORATE, 0.0))
    dropped(i.datagram(copy, KEY, OPEN, QUORATE, 2.0), "duplicate")  # first copy still pending
    i.all_callbacks_failed(first, 5.0)
    ok.ticket.release()
    dropped(i.datagram(first, KEY, OPEN, QUORATE, 600.0), "replayed")
    dropped(i.datagram(copy, KEY, OPEN, QUORATE, 600.0), "replayed")


def test_a_copy_seen_during_the_back_off_is_refused_when_replayed() -> None:
    i = intake()
    first, copy = packet(salt=b"\1" * 6), packet(salt=b"\2" * 6)
    ok = proceed(i.datagram(first, KEY, OPEN, QUORATE, 0.0))
    i.all_callbacks_failed(first, 5.0)
    ok.ticket.release()
    dropped(i.datagram(copy, KEY, OPEN, QUORATE, 5.5), "callback-backoff")
    dropped(i.datagram(copy, KEY, OPEN, QUORATE, 600.0), "replayed")


def test_one_key_holders_flood_cannot_push_out_what_another_key_signed() -> None:
    """Replay memory is bounded per signing key: tenant A flooding signed power requests
    evicts only A's entries, and tenant B's captured packet stays refused."""
    other = Key(b"tenant B's key")
    both = Policy.unrestricted([KEY, other])
    i = Intake(
        HashType.SHA256, Limits(), history=History(max_done=50), replays=ReplayGuard(max_entries=50)
    )
    b_req = packet(key=other, seqno=1)
    ok = proceed(i.datagram(b_req, other, both, QUORATE, 0.0))
    i.connected(b_req, ok, 0.1)
    ok.ticket.release()
    for seqno in range(2, 500):  # A's flood: distinct requests, callbacks that go nowhere
        flood = packet(seqno=seqno)
        verdict = i.datagram(flood, KEY, both, QUORATE, 1.0)
        if isinstance(verdict, Proceed):
            i.connected(flood, verdict, 1.0)
            verdict.ticket.release()
    dropped(i.datagram(b_req, other, both, QUORATE, 600.0), "replayed")


@pytest.mark.parametrize(
    ("address", "counted_as"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
    ],
)
def test_the_per_peer_cap_counts_an_ipv6_slash_64_as_one_sender(
    address: str, counted_as: str
) -> None:
    assert sender(address) == counted_as


def test_one_ipv6_host_cannot_take_the_listener_with_many_addresses() -> None:
    i = intake()
    held = [i.open_stream(f"2001:db8:1:2::{n:x}", 0.0) for n in range(1, 20)]
    assert sum(isinstance(t, Ticket) for t in held) == i.streams.per_key
    assert isinstance(i.open_stream("2001:db8:9:9::1", 0.0), Ticket)  # another /64
