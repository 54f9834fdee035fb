"""Fuzzing ``History`` with arbitrary admit / record / forget / next_alternate sequences.

Properties, for any sequence, any window and any ``max_entries``:
- size: at most ``max_entries`` pending and as many recorded keys;
- safety: a request recorded less than ``window`` ago, and not pushed out by ``max_entries``
  newer records, is a DUPLICATE (a retransmit never fences twice);
- liveness: a request that is neither pending nor recorded within the window, nor a power action
  handled before, nor backing off after a failed callback, is NEW (a client whose callback
  failed, or was dropped as busy, is served on its retransmit);
- a power action handled before, arriving after the window, is REPLAYED, never NEW;
- alternates come back in arrival order, each once, never with a callback already tried.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.corpus import fuzz_settings
from xvmd.protocol.history import CALLBACK_BACKOFF, Admission, History
from xvmd.protocol.wire import FenceRequest, HashType, Op

Callback = tuple[str, int] | None


def request(op: Op, seqno: int, domain: str, callback: Callback) -> FenceRequest:
    address, port = callback if callback is not None else (None, 0)
    return FenceRequest(
        op=op,
        hashtype=HashType.SHA256,
        addrlen=4,
        flags=0,
        domain=domain,
        address=address,
        port=port,
        random=b"\0" * 6,
        seqno=seqno,
        family=2 if address else 0,
        digest=b"\0" * 64,
        raw=b"",
    )


requests = st.builds(
    request,
    st.sampled_from([Op.OFF, Op.STATUS]),
    st.integers(1, 3),
    st.sampled_from(["vm", "VM", "other"]),
    st.sampled_from([("127.0.0.1", 1), ("127.0.0.2", 1), ("127.0.0.1", 2), ("::1", 1), None]),
)
steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["admit", "admit", "admit", "record", "forget", "fail", "alternate", "advance"]
        ),
        requests,
        st.floats(0, 15, allow_nan=False),
    ),
    max_size=60,
)


def key_of(req: FenceRequest) -> tuple[int, int, str]:
    return (int(req.op), req.seqno, req.domain.casefold())


@dataclass
class Facts:
    """What the test knows for sure about each request key, without modelling eviction."""

    recorded_at: dict[tuple[int, int, str], float] = field(default_factory=dict)
    records_after: dict[tuple[int, int, str], set[tuple[int, int, str]]] = field(
        default_factory=dict
    )
    pending: set[tuple[int, int, str]] = field(default_factory=set)  # maybe pending
    tried: dict[tuple[int, int, str], list[Callback]] = field(default_factory=dict)
    alternates: dict[tuple[int, int, str], list[FenceRequest]] = field(default_factory=dict)
    news_after: dict[tuple[int, int, str], set[tuple[int, int, str]]] = field(default_factory=dict)
    failed_until: dict[tuple[int, int, str], float] = field(default_factory=dict)


@fuzz_settings(1000)
@given(steps, st.floats(0, 20, allow_nan=False), st.integers(1, 6))
def test_history_stays_bounded_safe_and_live(
    ops: list[tuple[str, FenceRequest, float]], window: float, max_entries: int
) -> None:
    h = History(window=window, max_entries=max_entries)
    f = Facts()
    now = 1000.0
    for what, req, dt in ops:
        k = key_of(req)
        if what == "advance":
            now += dt
        elif what == "admit":
            got = h.admit(req, now)
            at = f.recorded_at.get(k)
            fresh = at is not None and at > now - window
            done = req.op.is_power_action and at is not None  # the test spans < an hour
            backing = f.failed_until.get(k, float("-inf")) > now
            if fresh and len(f.records_after[k]) < max_entries:
                assert got is Admission.DUPLICATE  # safety
            elif done:
                assert got is Admission.REPLAYED  # a replay is never acted on again
            if k not in f.pending and not fresh and not done and not backing:
                assert got is Admission.NEW  # liveness
            if got is Admission.NEW:
                assert not done
                assert not fresh or len(f.records_after[k]) >= max_entries
                for other in f.news_after.values():
                    other.add(k)
                f.pending.add(k)
                f.tried[k] = [req.callback]
                f.alternates[k] = []
                f.news_after[k] = set()
            elif got is Admission.ALTERNATE:
                assert k in f.pending and req.callback not in f.tried[k]
                f.tried[k].append(req.callback)
                f.alternates[k].append(req)
            elif got is Admission.BACKOFF:
                assert backing
            elif got is Admission.DUPLICATE:
                assert fresh or (k in f.pending and req.callback in f.tried.get(k, []))
            else:
                assert got is Admission.REPLAYED and done
        elif what == "record":
            h.record(req, now)
            for other in f.records_after.values():
                other.add(k)
            f.recorded_at[k] = now
            f.records_after[k] = set()
            f.pending.discard(k)
            f.alternates.pop(k, None)
        elif what == "forget":
            h.forget(req)
            f.pending.discard(k)
            f.alternates.pop(k, None)
        elif what == "fail":
            h.failed(req, now)
            f.pending.discard(k)
            f.alternates.pop(k, None)
            f.failed_until[k] = now + CALLBACK_BACKOFF
        else:
            alt = h.next_alternate(req)
            queued = f.alternates.get(k, [])
            if alt is not None:
                assert queued and alt is queued.pop(0)  # arrival order, each once
            elif queued:
                # Only a pending entry pushed out by max_entries newer ones loses its alternates.
                assert len(f.news_after[k]) >= max_entries
                queued.clear()
        assert h.pending <= max_entries
        assert h.recorded <= max_entries
        assert len(h) <= 3 * max_entries


def test_duplicate_window_boundary_is_exact() -> None:
    h = History(window=10.0)
    req = request(Op.STATUS, 7, "vm", ("127.0.0.1", 1))
    assert h.admit(req, 0.0) is Admission.NEW
    h.record(req, 0.0)
    assert h.admit(req, 9.999) is Admission.DUPLICATE
    assert h.admit(req, 10.0) is Admission.NEW


def _retained_by_alternates(copies: int) -> int:
    """Bytes a History keeps after ``copies`` copies of one pending request, each with its own
    callback port (what a key holder can send while our first callback is in progress)."""
    reqs = [request(Op.OFF, 1, "vm", ("127.0.0.1", 1 + i)) for i in range(copies + 1)]
    tracemalloc.start()
    try:
        h = History()
        before = tracemalloc.get_traced_memory()[0]
        assert h.admit(reqs[0], 0.0) is Admission.NEW
        for r in reqs[1:]:
            h.admit(r, 0.0)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_alternates_per_pending_request_are_bounded() -> None:
    small = _retained_by_alternates(1_000)
    large = _retained_by_alternates(20_000)
    assert large < small + 64 * 1024, (small, large)
    h = History()
    first = request(Op.OFF, 1, "vm", ("127.0.0.1", 1))
    h.admit(first, 0.0)
    for port in range(2, 5_002):
        h.admit(request(Op.OFF, 1, "vm", ("127.0.0.1", port)), 0.0)
    kept = 0
    while h.next_alternate(first) is not None and kept <= 10_000:
        kept += 1
    # The stock client sends one copy per local address: a few dozen at most is plenty.
    assert kept <= 64, kept
