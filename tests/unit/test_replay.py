"""ReplayGuard and fingerprint with an explicit clock (xvmd/protocol/replay.py)."""

from __future__ import annotations

import pytest

from tests.fuzz.corpus import KEY, flip_bits, signed
from xvmd.protocol.replay import MAX_ENTRIES, REPLAY_WINDOW, ReplayGuard, fingerprint
from xvmd.protocol.wire import REQUEST_SIZE, Op

PACKET = signed(Op.OFF, "vm-01", key=KEY, seqno=7)


def fp(n: int) -> bytes:
    return fingerprint(b"packet %d" % n)


# -- fingerprint -----------------------------------------------------------------------------------


def test_fingerprint_is_16_bytes() -> None:
    assert len(fingerprint(PACKET)) == 16
    assert len(fingerprint(b"")) == 16


def test_fingerprint_is_stable_for_equal_input() -> None:
    assert fingerprint(PACKET) == fingerprint(bytes(bytearray(PACKET)))


@pytest.mark.parametrize("bit", [0, 7, 8 * 98, 8 * 103 + 7, 8 * 112, 8 * REQUEST_SIZE - 1])
def test_fingerprint_differs_for_one_flipped_bit(bit: int) -> None:
    """Bits in the op, the random bytes, the hash and the last byte."""
    assert fingerprint(flip_bits(PACKET, [bit])) != fingerprint(PACKET)


def test_fingerprint_of_a_retransmit_differs() -> None:
    """The stock client signs each copy with fresh random bytes: another fingerprint."""
    other = signed(Op.OFF, "vm-01", key=KEY, seqno=7, salt=b"\x09" * 6)
    assert fingerprint(other) != fingerprint(PACKET)


# -- the guard -------------------------------------------------------------------------------------


def test_defaults() -> None:
    g = ReplayGuard()
    assert g.window == REPLAY_WINDOW == 3600.0
    assert g.max_entries == MAX_ENTRIES == 16384
    assert len(g) == 0


def test_unseen_has_no_age() -> None:
    g = ReplayGuard()
    assert g.age(fp(1), 0.0) is None
    g.remember(fp(1), 0.0)
    assert g.age(fp(2), 1.0) is None


def test_remember_then_age() -> None:
    g = ReplayGuard()
    g.remember(fp(1), 100.0)
    assert g.age(fp(1), 100.0) == 0.0
    assert g.age(fp(1), 105.5) == 5.5
    assert len(g) == 1


def test_remember_again_keeps_the_first_time() -> None:
    g = ReplayGuard()
    g.remember(fp(1), 0.0)
    g.remember(fp(1), 50.0)
    assert g.age(fp(1), 60.0) == 60.0
    assert len(g) == 1


def test_forgotten_after_the_window() -> None:
    g = ReplayGuard(window=3600.0)
    g.remember(fp(1), 0.0)
    assert g.age(fp(1), 3599.9) == pytest.approx(3599.9)
    assert g.age(fp(1), 3600.0) is None  # exactly one window later: gone
    g.expire(3601.0)  # the sweep runs at most once a second (it is on the hot path)
    assert len(g) == 0


def test_expiry_is_per_entry() -> None:
    g = ReplayGuard(window=10.0)
    g.remember(fp(1), 0.0)
    g.remember(fp(2), 5.0)
    assert g.age(fp(1), 12.0) is None
    assert g.age(fp(2), 12.0) == 7.0
    assert len(g) == 1


def test_max_entries_evicts_the_oldest() -> None:
    g = ReplayGuard(max_entries=3)
    for n in range(5):
        g.remember(fp(n), float(n))
        assert len(g) <= 3
    assert len(g) == 3
    assert g.age(fp(0), 5.0) is None
    assert g.age(fp(1), 5.0) is None
    assert [g.age(fp(n), 5.0) for n in (2, 3, 4)] == [3.0, 2.0, 1.0]


def test_memory_is_bounded_under_a_flood() -> None:
    g = ReplayGuard(max_entries=100)
    for n in range(10_000):
        g.remember(fp(n), n * 1e-3)
    assert len(g) == 100
    assert g.age(fp(9_999), 10.0) is not None
