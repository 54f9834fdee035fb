"""Duplicate suppression with an explicit clock."""

from __future__ import annotations

import pytest

from xvmd.protocol.history import (
    CALLBACK_BACKOFF,
    DONE_WINDOW,
    DUPLICATE_WINDOW,
    Admission,
    History,
    request_key,
)
from xvmd.protocol.wire import FenceRequest, Op, encode_request, parse_request


def req(
    op: Op = Op.OFF,
    domain: str = "vm-01",
    seqno: int = 4711,
    address: str = "192.0.2.10",
    port: int = 1229,
) -> FenceRequest:
    return parse_request(encode_request(op, domain, address=address, port=port, seqno=seqno))


def test_window_is_ten_seconds() -> None:
    assert DUPLICATE_WINDOW == 10.0
    assert History().window == 10.0


def test_first_copy_is_new() -> None:
    h = History()
    assert h.admit(req(), 0.0) is Admission.NEW
    assert len(h) == 1


def test_recorded_request_is_duplicate_within_window() -> None:
    h = History()
    r = req()
    assert h.admit(r, 0.0) is Admission.NEW
    h.record(r, 1.0)
    assert h.admit(r, 1.5) is Admission.DUPLICATE
    assert h.admit(req(domain="VM-01"), 5.0) is Admission.DUPLICATE  # case differs only
    assert h.admit(req(domain="Vm-01", address="192.0.2.99"), 10.9) is Admission.DUPLICATE


def test_key_folds_case() -> None:
    assert request_key(req(domain="NODE1")) == request_key(req(domain="node1"))
    assert request_key(req(domain="node1")) != request_key(req(domain="node2"))


@pytest.mark.parametrize(
    "other",
    [
        req(op=Op.REBOOT),
        req(op=Op.STATUS),
        req(seqno=4712),
        req(seqno=0),
        req(domain="vm-02"),
    ],
    ids=["op-reboot", "op-status", "seqno+1", "seqno0", "domain"],
)
def test_different_op_seqno_or_domain_is_new(other: FenceRequest) -> None:
    h = History()
    r = req()
    assert h.admit(r, 0.0) is Admission.NEW
    h.record(r, 0.0)
    assert h.admit(other, 1.0) is Admission.NEW
    assert h.admit(r, 1.0) is Admission.DUPLICATE


def test_new_again_after_window() -> None:
    h = History()
    r = req(op=Op.STATUS)  # a power action is remembered longer (below)
    h.admit(r, 100.0)
    h.record(r, 100.0)
    assert h.admit(r, 109.9) is Admission.DUPLICATE
    assert h.admit(r, 110.5) is Admission.NEW
    assert len(h) == 1


def test_window_counts_from_record_not_admit() -> None:
    h = History()
    r = req(op=Op.STATUS)  # a power action is remembered longer (below)
    h.admit(r, 0.0)
    h.record(r, 8.0)  # the callback took 8 s
    assert h.admit(r, 17.0) is Admission.DUPLICATE
    assert h.admit(r, 18.5) is Admission.NEW


def test_entries_expire_independently() -> None:
    h = History()
    a, b = req(Op.STATUS, seqno=1), req(Op.STATUS, seqno=2)
    h.admit(a, 0.0)
    h.record(a, 0.0)
    h.admit(b, 5.0)
    h.record(b, 5.0)
    assert h.admit(a, 12.0) is Admission.NEW
    assert h.admit(b, 12.0) is Admission.DUPLICATE


def test_custom_window() -> None:
    h = History(window=2.0)
    r = req(op=Op.STATUS)  # a power action is remembered longer (below)
    h.admit(r, 0.0)
    h.record(r, 0.0)
    assert h.admit(r, 1.9) is Admission.DUPLICATE
    assert h.admit(r, 2.1) is Admission.NEW


@pytest.mark.parametrize("op", [Op.OFF, Op.ON, Op.REBOOT])
def test_a_handled_power_action_is_a_replay_after_the_window_for_an_hour(op: Op) -> None:
    h = History()
    r = req(op)
    h.admit(r, 0.0)
    h.record(r, 0.0)
    assert h.admit(r, 5.0) is Admission.DUPLICATE  # a retransmit or another interface's copy
    # Later, any copy (here one captured on another interface) is a replay, not a new request.
    assert h.admit(req(op, address="198.51.100.7"), 10.5) is Admission.REPLAYED
    assert h.admit(r, DONE_WINDOW - 1) is Admission.REPLAYED
    assert h.admit_stream(r, DONE_WINDOW - 1) is Admission.REPLAYED
    assert h.done == 1
    assert h.admit(r, DONE_WINDOW + 0.5) is Admission.NEW
    assert h.done == 0


def test_handled_power_actions_are_bounded() -> None:
    h = History(max_done=3)
    for seqno in range(10):
        r = req(seqno=seqno)
        h.admit(r, float(seqno))
        h.record(r, float(seqno))
    assert h.done == 3  # the oldest went first
    assert h.admit(req(seqno=0), 20.0) is Admission.NEW
    assert h.admit(req(seqno=9), 20.0) is Admission.REPLAYED


def test_a_failed_callback_backs_off_then_the_retransmit_is_served() -> None:
    h = History()
    r = req()
    assert h.admit(r, 0.0) is Admission.NEW
    h.failed(r, 5.0)  # every copy's callback failed (5 s connect timeout)
    assert h.admit(r, 5.1) is Admission.BACKOFF
    assert h.admit(req(address="192.0.2.99"), 5.9) is Admission.BACKOFF
    # The stock client retransmits every 2 s: its next copy is served.
    assert h.admit(r, 5.0 + CALLBACK_BACKOFF + 0.01) is Admission.NEW
    assert CALLBACK_BACKOFF < 2.0


def test_back_off_entries_expire() -> None:
    h = History()
    for seqno in range(100):
        h.admit(req(seqno=seqno), 0.0)
        h.failed(req(seqno=seqno), 0.0)
    assert len(h) == 100
    h.expire(CALLBACK_BACKOFF + 0.1)
    assert len(h) == 0


def test_stream_requests_are_recorded_at_once() -> None:
    h = History()
    r = req(Op.STATUS)
    assert h.admit_stream(r, 0.0) is Admission.NEW
    assert h.admit_stream(r, 1.0) is Admission.DUPLICATE  # the same bytes on a second stream
    assert h.admit(r, 2.0) is Admission.DUPLICATE  # ... or by multicast
    assert h.admit_stream(r, 10.5) is Admission.NEW


# -- pending requests and alternates ---------------------------------------------------------------


def test_pending_copy_with_same_callback_is_duplicate() -> None:
    h = History()
    r = req()
    assert h.admit(r, 0.0) is Admission.NEW
    assert h.admit(req(), 0.5) is Admission.DUPLICATE  # a retransmit via the same address
    assert h.next_alternate(r) is None


def test_pending_copy_with_other_callback_is_alternate() -> None:
    h = History()
    first = req(address="127.0.0.1")
    second = req(address="192.0.2.1")
    third = req(address="192.0.2.1", port=2000)
    assert h.admit(first, 0.0) is Admission.NEW
    assert h.admit(second, 0.1) is Admission.ALTERNATE
    assert h.admit(third, 0.2) is Admission.ALTERNATE  # another port is another callback
    assert h.admit(req(address="192.0.2.1"), 0.3) is Admission.DUPLICATE  # already kept
    alt = h.next_alternate(first)
    assert alt is not None
    assert alt.callback == ("192.0.2.1", 1229)
    alt2 = h.next_alternate(first)
    assert alt2 is not None
    assert alt2.callback == ("192.0.2.1", 2000)
    assert h.next_alternate(first) is None


def test_alternates_of_a_recorded_request_are_duplicates() -> None:
    h = History()
    first = req(address="127.0.0.1")
    h.admit(first, 0.0)
    h.admit(req(address="192.0.2.1"), 0.1)
    h.record(first, 0.2)
    assert h.next_alternate(first) is None  # recording drops the kept copies
    assert h.admit(req(address="198.51.100.1"), 0.3) is Admission.DUPLICATE


def test_next_alternate_of_unknown_request() -> None:
    assert History().next_alternate(req()) is None


def test_forget_lets_a_retransmit_be_new() -> None:
    h = History()
    r = req()
    h.admit(r, 0.0)
    assert h.admit(r, 1.0) is Admission.DUPLICATE
    h.forget(r)
    assert len(h) == 0
    assert h.admit(r, 2.0) is Admission.NEW
    h.forget(req(seqno=999))  # forgetting something unknown is harmless
    assert h.admit(r, 3.0) is Admission.DUPLICATE


def test_forget_drops_kept_alternates() -> None:
    h = History()
    first = req(address="127.0.0.1")
    h.admit(first, 0.0)
    assert h.admit(req(address="192.0.2.1"), 0.1) is Admission.ALTERNATE
    h.forget(first)
    assert h.next_alternate(first) is None
    assert h.admit(req(address="192.0.2.1"), 0.2) is Admission.NEW


def test_pending_entries_do_not_expire() -> None:
    """A request still being called back stays pending however long the callback takes."""
    h = History()
    r = req()
    h.admit(r, 0.0)
    assert h.admit(r, 30.0) is Admission.DUPLICATE


# -- bound -----------------------------------------------------------------------------------------


def test_max_entries_bound() -> None:
    h = History(max_entries=5)
    for i in range(50):
        assert h.admit(req(seqno=i), 0.0) is Admission.NEW
        assert len(h) <= 5
    assert len(h) == 5
    assert h.admit(req(seqno=49), 0.0) is Admission.DUPLICATE  # newest kept
    assert h.admit(req(seqno=0), 0.0) is Admission.NEW  # oldest evicted


def test_max_entries_bound_with_recorded_entries() -> None:
    h = History(max_entries=3)
    for i in range(10):
        r = req(Op.STATUS, seqno=i)
        h.admit(r, float(i) / 10)
        h.record(r, float(i) / 10)
        assert len(h) <= 3
    assert h.admit(req(Op.STATUS, seqno=9), 1.0) is Admission.DUPLICATE
    assert h.admit(req(Op.STATUS, seqno=6), 1.0) is Admission.NEW


def test_max_entries_bound_mixed() -> None:
    """At most ``max_entries`` recorded and as many pending keys."""
    h = History(max_entries=4)
    for i in range(20):
        done = req(seqno=1000 + i)
        h.admit(done, 0.0)
        h.record(done, 0.0)
        h.admit(req(seqno=i), 0.0)  # left pending
        assert len(h) <= 8
    assert h.admit(req(seqno=1019), 0.0) is Admission.DUPLICATE
    assert h.admit(req(seqno=19), 0.0) is Admission.DUPLICATE


def test_expired_entries_are_purged() -> None:
    h = History()
    for i in range(100):
        r = req(seqno=i)
        h.admit(r, 0.0)
        h.record(r, 0.0)
    assert len(h) == 100
    h.admit(req(seqno=1000), 20.0)
    assert len(h) == 1


def test_pending_entry_does_not_extend_the_window_of_others() -> None:
    """Regression: a still-pending older request used to stop the purge, so recorded requests
    behind it stayed DUPLICATE long after their window."""
    h = History()
    pending = req(seqno=1)
    done = req(Op.STATUS, seqno=2)
    assert h.admit(pending, 0.0) is Admission.NEW  # its callback is still being attempted
    assert h.admit(done, 0.1) is Admission.NEW
    h.record(done, 0.2)
    # 20 s later the window of ``done`` is long over; the other request is still pending.
    assert h.admit(done, 20.0) is Admission.NEW
    assert h.admit(pending, 20.0) is Admission.DUPLICATE
