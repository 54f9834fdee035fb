"""Quota, Ticket and Throttle with an explicit clock (xvmd/core/limits.py)."""

from __future__ import annotations

from xvmd.core.limits import Full, Quota, Throttle, Ticket

CB_A = ("192.0.2.1", 1229)
CB_B = ("192.0.2.2", 1229)


def ticket(q: Quota, key: object) -> Ticket:
    t = q.take(key)
    assert isinstance(t, Ticket), t
    return t


# -- Quota -----------------------------------------------------------------------------------------


def test_quota_total_cap_says_full() -> None:
    q = Quota(total=3, per_key=10)
    held = [ticket(q, ("192.0.2.1", port)) for port in range(3)]
    assert q.used == 3
    assert q.take(("192.0.2.9", 1)) is Full.TOTAL
    assert q.take(("192.0.2.1", 0)) is Full.TOTAL  # the total is checked first
    held[0].release()
    assert isinstance(q.take(("192.0.2.9", 1)), Ticket)


def test_quota_per_key_cap_says_key_full() -> None:
    q = Quota(total=10, per_key=2)
    ticket(q, CB_A)
    ticket(q, CB_A)
    assert q.take(CB_A) is Full.KEY
    assert q.holding(CB_A) == 2
    assert isinstance(q.take(CB_B), Ticket)  # another key still has room
    assert q.used == 3


def test_refusals_hold_nothing() -> None:
    q = Quota(total=2, per_key=1)
    ticket(q, CB_A)
    for _ in range(100):
        assert q.take(CB_A) is Full.KEY
    assert q.used == 1
    assert q.holding(CB_A) == 1
    ticket(q, CB_B)
    for _ in range(100):
        assert q.take("x") is Full.TOTAL
    assert q.used == 2
    assert q.holding("x") == 0


def test_release_frees_the_place() -> None:
    q = Quota(total=1, per_key=1)
    t = ticket(q, CB_A)
    assert q.take(CB_A) is Full.TOTAL
    t.release()
    assert q.used == 0
    assert q.holding(CB_A) == 0
    ticket(q, CB_A)


def test_double_release_frees_one_place_only() -> None:
    q = Quota(total=10, per_key=3)
    first = ticket(q, CB_A)
    ticket(q, CB_A)
    ticket(q, CB_A)
    first.release()
    first.release()  # idempotent: must not give back a place another ticket holds
    first.release()
    assert q.holding(CB_A) == 2
    assert q.used == 2
    ticket(q, CB_A)
    assert q.take(CB_A) is Full.KEY


def test_holding_counts_per_key() -> None:
    q = Quota(total=10, per_key=5)
    assert q.holding(CB_A) == 0
    a = [ticket(q, CB_A) for _ in range(3)]
    ticket(q, CB_B)
    assert (q.holding(CB_A), q.holding(CB_B), q.used) == (3, 1, 4)
    for t in a:
        t.release()
    assert (q.holding(CB_A), q.holding(CB_B), q.used) == (0, 1, 1)


def test_releasing_everything_returns_to_empty() -> None:
    q = Quota(total=50, per_key=4)
    tickets = [ticket(q, (f"192.0.2.{n % 13}", 1)) for n in range(50)]
    assert q.take("late") is Full.TOTAL
    for t in reversed(tickets):
        t.release()
        t.release()
    assert q.used == 0
    assert all(q.holding((f"192.0.2.{n}", 1)) == 0 for n in range(13))


# -- Throttle --------------------------------------------------------------------------------------


def test_first_hit_reports_at_once() -> None:
    t = Throttle(interval=60.0)
    assert t.hit("a", 0.0) == 0
    assert t.hit("b", 0.0) == 0  # keys are independent


def test_repeats_within_the_interval_are_quiet() -> None:
    t = Throttle(interval=60.0)
    t.hit("a", 0.0)
    assert [t.hit("a", 0.5 * n) for n in range(1, 100)] == [None] * 99
    assert t.hit("a", 59.999) is None


def test_next_hit_after_the_interval_reports_the_quiet_count() -> None:
    t = Throttle(interval=60.0)
    t.hit("a", 0.0)
    for n in range(5):
        t.hit("a", 1.0 + n)
    assert t.hit("a", 60.0) == 5  # reported now, with how many were kept quiet
    assert t.hit("a", 61.0) is None  # a new interval starts from the report
    assert t.hit("a", 120.0) == 1


def test_due_reports_owed_summaries_once() -> None:
    t = Throttle(interval=60.0)
    t.hit("a", 0.0)
    t.hit("a", 1.0)
    t.hit("a", 2.0)
    t.hit("b", 0.0)  # no repeats: nothing owed
    assert t.due(30.0) == []  # the interval has not passed
    assert t.due(60.0) == [("a", 2)]
    assert t.due(61.0) == []  # reported once
    assert t.hit("a", 62.0) is None  # the summary started a new interval


def test_due_forgets_silent_keys() -> None:
    t = Throttle(interval=60.0)
    t.hit("a", 0.0)
    t.hit("b", 0.0)
    t.hit("b", 1.0)
    assert t.due(60.0) == [("b", 1)]
    assert t.remembered == ("b",)  # "a" was silent a whole interval: forgotten
    assert t.due(120.0) == []
    assert not t.remembered  # both forgotten now
    assert t.hit("a", 120.5) == 0  # reported at once again


def test_max_keys_bound_forgets_the_oldest() -> None:
    t = Throttle(interval=60.0, max_keys=3)
    for k in "abcd":
        assert t.hit(k, 0.0) == 0
    assert t.remembered == ("b", "c", "d")  # "a", the oldest, went first
    assert t.hit("d", 1.0) is None  # newest kept
    assert t.hit("a", 1.0) == 0  # oldest was evicted: reported again


def test_memory_is_bounded_under_a_flood_of_sources() -> None:
    t = Throttle(interval=60.0, max_keys=100)
    for n in range(10_000):
        t.hit(("reason", f"198.51.100.{n}"), n * 1e-3)
        assert len(t.remembered) <= 100
    owed = t.due(1e6)
    assert owed == []  # nobody repeated
    assert t.remembered == ()
