"""IssuedChallenges with an explicit clock: what the daemon sent is never answered back.

Rules under test (xvmd/protocol/challenges.py): a live challenge (its session still waits for the
answer) is never forgotten, whatever the load; a retired one is kept ``window`` seconds, at most
``max_retired`` of them; sessions sharing a registry issue on C1 and retire when they end.
"""

from __future__ import annotations

import hashlib

import pytest

from xvmd.protocol.auth import Key
from xvmd.protocol.challenges import MAX_RETIRED, RETIRED_WINDOW, IssuedChallenges
from xvmd.protocol.session import Phase, ServerSession
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType

KEY = Key(b"challenges unit-test key\n")
AUTH = HashType.SHA256


def challenge(n: int) -> bytes:
    """A distinct 64-byte challenge per ``n`` (random-looking, like os.urandom's)."""
    return hashlib.sha512(b"challenge-%d" % n).digest()


def session(registry: IssuedChallenges, n: int, now: float = 0.0) -> ServerSession:
    return ServerSession(auth=AUTH, key=KEY, challenge=challenge(n), now=now, issued=registry)


def phase(s: ServerSession) -> Phase:
    """The current phase (a call, so type checkers do not narrow it across steps)."""
    return s.phase


# -- the registry alone ----------------------------------------------------------------------------


def test_defaults() -> None:
    reg = IssuedChallenges()
    assert reg.window == RETIRED_WINDOW == 60.0
    assert reg.max_retired == MAX_RETIRED == 4096
    assert len(reg) == 0


def test_unknown_challenge_is_not_issued() -> None:
    reg = IssuedChallenges()
    assert reg.issued(challenge(1), 0.0) is False
    reg.issue(challenge(1))
    assert reg.issued(challenge(2), 0.0) is False
    assert reg.issued(b"\0" * CHALLENGE_SIZE, 0.0) is False
    assert reg.issued(challenge(1)[:-1] + b"\0", 0.0) is False  # one byte off: another one


def test_live_challenge_is_issued_forever() -> None:
    reg = IssuedChallenges(window=1.0)
    reg.issue(challenge(1))
    for now in (0.0, 1.0, 60.0, 1e9):
        assert reg.issued(challenge(1), now)
    assert len(reg) == 1


def test_retired_challenge_kept_window_seconds_then_forgotten() -> None:
    reg = IssuedChallenges(window=60.0)
    reg.issue(challenge(1))
    reg.retire(challenge(1), 100.0)
    assert len(reg) == 1
    assert reg.issued(challenge(1), 100.0)
    assert reg.issued(challenge(1), 159.999)
    assert reg.issued(challenge(1), 160.0) is False  # kept until now + window, exclusive
    assert len(reg) == 0


def test_retiring_an_unknown_challenge_adds_nothing() -> None:
    """Only challenges that were sent can be retired (a session that failed before C1)."""
    reg = IssuedChallenges()
    reg.retire(challenge(1), 0.0)
    assert len(reg) == 0
    assert reg.issued(challenge(1), 0.0) is False


def test_retire_twice_keeps_the_first_deadline() -> None:
    reg = IssuedChallenges(window=10.0)
    reg.issue(challenge(1))
    reg.retire(challenge(1), 0.0)
    reg.retire(challenge(1), 5.0)  # no longer live: ignored, not extended
    assert reg.issued(challenge(1), 9.9)
    assert reg.issued(challenge(1), 10.0) is False


def test_retired_challenges_expire_in_order() -> None:
    reg = IssuedChallenges(window=10.0)
    for n in range(5):
        reg.issue(challenge(n))
        reg.retire(challenge(n), float(n))
    assert reg.issued(challenge(4), 12.5)
    assert len(reg) == 2  # retired at 3 and 4 remain; 0..2 ended at 10..12
    assert not any(reg.issued(challenge(n), 12.5) for n in range(3))


# -- bounds ----------------------------------------------------------------------------------------


def test_live_challenges_survive_max_retired_pressure() -> None:
    """Eviction must not reopen the attack: only finished sessions' challenges are dropped."""
    reg = IssuedChallenges(window=3600.0, max_retired=10)
    live = [challenge(n) for n in range(20)]
    for c in live:
        reg.issue(c)
    for n in range(1000, 3000):  # a flood of sessions that finished
        reg.issue(challenge(n))
        reg.retire(challenge(n), 0.0)
    assert all(reg.issued(c, 1.0) for c in live)
    assert len(reg) == len(live) + 10


def test_max_retired_evicts_the_oldest_retired() -> None:
    reg = IssuedChallenges(window=3600.0, max_retired=3)
    for n in range(5):
        reg.issue(challenge(n))
        reg.retire(challenge(n), float(n))
    assert [reg.issued(challenge(n), 5.0) for n in range(5)] == [False, False, True, True, True]


def test_memory_is_bounded_by_live_plus_max_retired() -> None:
    reg = IssuedChallenges(window=1e9, max_retired=64)
    for n in range(10_000):
        reg.issue(challenge(n))
        if n % 100:  # one in a hundred stays live
            reg.retire(challenge(n), float(n))
        assert len(reg) <= n // 100 + 1 + 64
    assert len(reg) == 100 + 64


# -- sessions sharing a registry -------------------------------------------------------------------


def test_a_session_issues_its_challenge_only_when_it_sends_it() -> None:
    reg = IssuedChallenges()
    s = session(reg, 1)
    assert len(reg) == 0  # nothing sent yet: nothing to refuse
    s.receive_data(challenge(100), 0.0)
    assert s.data_to_send()[CHALLENGE_SIZE:] == challenge(1)
    assert reg.issued(challenge(1), 1e9)  # live: never forgotten while the session waits
    assert len(reg) == 1


@pytest.mark.parametrize("outcome", ["authenticated", "wrong-answer", "timeout", "closed"])
def test_a_finished_session_retires_its_challenge(outcome: str) -> None:
    reg = IssuedChallenges(window=60.0)
    s = session(reg, 1, now=0.0)
    s.receive_data(challenge(100), 1.0)
    assert reg.issued(challenge(1), 1e9)  # live
    if outcome == "authenticated":
        s.receive_data(KEY.digest(AUTH, challenge(1)), 2.0)
        assert phase(s) is Phase.AUTHENTICATED
    elif outcome == "wrong-answer":
        s.receive_data(b"\0" * CHALLENGE_SIZE, 2.0)
    elif outcome == "timeout":
        s.handle_timer(11.0)  # 10 s after C1 arrived
    else:
        s.connection_closed()
    assert phase(s) in (Phase.AUTHENTICATED, Phase.FAILED)
    assert len(reg) == 1  # moved from live to retired, still refused for a while
    assert reg.issued(challenge(1), 30.0)
    assert reg.issued(challenge(1), 1e9) is False  # retired: forgotten after its window
    assert len(reg) == 0


def test_a_session_failing_before_its_challenge_leaves_nothing() -> None:
    reg = IssuedChallenges()
    s = session(reg, 1)
    s.handle_timer(100.0)
    assert phase(s) is Phase.FAILED
    assert len(reg) == 0


def test_sessions_in_flight_are_all_live() -> None:
    reg = IssuedChallenges(window=1.0, max_retired=1)
    sessions = [session(reg, n) for n in range(50)]
    for n, s in enumerate(sessions):
        s.receive_data(challenge(1000 + n), 0.0)
    for n, s in enumerate(sessions[:25]):  # half of them finish
        s.receive_data(KEY.digest(AUTH, challenge(n)), 0.0)
        assert phase(s) is Phase.AUTHENTICATED
    assert len(reg) == 25 + 1
    assert all(reg.issued(challenge(n), 1e6) for n in range(25, 50))
