"""Challenge reflection: no session authenticates with an answer the daemon computed itself.

The client challenges first and the daemon answers ``R(x) = pad64(H(key || x))`` for any 64
bytes x (docs/protocol.md §4.2). With several sessions open, an attacker without the key could
send session A's challenge C2 as the C1 of session B, read R(C2) from B and present it on A.
Sessions sharing one ``IssuedChallenges`` refuse such a C1 (xvmd/protocol/challenges.py).

The harness: 2 to 5 ``ServerSession``s sharing one registry and one key, each with its own
unpredictable challenge. An attacker without the key drives them in any interleaving; at each
step it picks a session and writes 64 bytes chosen from everything any session wrote so far
(cut at 64-byte boundaries: answers R1 and challenges C2) or fresh bytes, or a piece of either
(partial writes, which shift the framing), or fires a timer, or closes. Properties:

- no session ever reaches AUTHENTICATED;
- a C1 equal to the challenge of a session waiting for its answer is refused as a reflection
  (``reflected``), and a C1 that no session ever sent is never called one.

Controls: the same harness with a client that holds the key authenticates every session in any
interleaving; without the registry (``issued=None``) the attack succeeds, both in a fixed
sequence and when hypothesis searches the harness's steps for it.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import Phase as Stage
from hypothesis import event, find, given, settings
from hypothesis import strategies as st

from tests.fuzz import corpus
from tests.fuzz.corpus import KEY, OTHER_KEY, fuzz_settings
from xvmd.protocol.auth import Key
from xvmd.protocol.challenges import IssuedChallenges
from xvmd.protocol.session import AUTH_STEP_TIMEOUT, Phase, ServerSession
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType

WAITING = (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE)
C = CHALLENGE_SIZE


def unpredictable(seed: bytes, label: bytes, i: int) -> bytes:
    """64 bytes nobody can guess without ``seed``: stands in for os.urandom. The properties
    assume the daemon's challenge cannot be guessed before it is sent; hypothesis's own bytes
    (zeros, repeats) never equal these."""
    return hashlib.sha512(label + seed + bytes([i])).digest()


class Daemon:
    """``n`` sessions of one daemon (one key, one registry or none) and all they wrote."""

    def __init__(
        self, auth: HashType, key: Key, seed: bytes, n: int, issued: IssuedChallenges | None
    ) -> None:
        self.now = 1000.0
        self.registry = issued
        self.challenges = [unpredictable(seed, b"daemon", i) for i in range(n)]
        self.sessions = [
            ServerSession(auth=auth, key=key, challenge=c, now=self.now, issued=issued)
            for c in self.challenges
        ]
        self.fed = [bytearray() for _ in range(n)]  # bytes each session took while waiting
        self.written = [bytearray() for _ in range(n)]  # bytes each session wrote
        self.pool: list[bytes] = []  # everything written, cut at 64-byte boundaries

    @property
    def n(self) -> int:
        return len(self.sessions)

    def authenticated(self) -> list[int]:
        return [i for i, s in enumerate(self.sessions) if s.phase is Phase.AUTHENTICATED]

    def send(self, i: int, data: bytes) -> None:
        """Write ``data`` to session ``i`` and read everything it answers."""
        s = self.sessions[i]
        completes_c1 = s.phase is Phase.AWAIT_CHALLENGE and len(data) >= s.bytes_wanted
        live = {c for c, t in zip(self.challenges, self.sessions, strict=True) if waits(t)}
        ever_sent = {bytes(w[C : 2 * C]) for w in self.written if len(w) >= 2 * C}
        if s.phase in WAITING:
            self.fed[i] += data
        s.receive_data(data, self.now)
        out = s.data_to_send()
        self.written[i] += out
        self.pool += [out[k : k + C] for k in range(0, len(out), C)]
        if completes_c1:
            self._check_c1(i, live, ever_sent)

    def _check_c1(self, i: int, live: set[bytes], ever_sent: set[bytes]) -> None:
        s, c1 = self.sessions[i], bytes(self.fed[i][:C])
        if self.registry is not None and c1 in live:
            assert s.reflected and s.phase is Phase.FAILED
            assert s.failure is not None and "reflection" in s.failure
            assert s.data_to_send() == b"" and bytes(self.written[i]) == b""
        if c1 not in ever_sent:
            assert not s.reflected
            assert bytes(self.written[i][C : 2 * C]) == self.challenges[i]

    def timer(self, i: int, advance: float) -> None:
        self.now += advance
        self.sessions[i].handle_timer(self.now)

    def close(self, i: int) -> None:
        self.sessions[i].connection_closed()


def waits(s: ServerSession) -> bool:
    """True when ``s`` sent its challenge and waits for the answer (its challenge is live)."""
    return s.phase is Phase.AWAIT_RESPONSE


# -- the attacker ----------------------------------------------------------------------------------

KINDS = ("pool", "pool", "pool", "pool", "random", "partial", "partial", "timer", "close")

# (kind, session, pick from the pool, fresh bytes, slice start, slice end, clock advance);
# indices are taken modulo what exists when the step runs, so every step is meaningful.
Step = tuple[str, int, int, bytes, int, int, float]
steps = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 4),
    st.integers(0, 63),
    st.binary(min_size=C, max_size=C),
    st.integers(0, C),
    st.integers(0, C),
    st.sampled_from([0.0, 1.0, AUTH_STEP_TIMEOUT - 0.5, AUTH_STEP_TIMEOUT, 61.0]),
)


def attack(d: Daemon, step: Step) -> None:
    """One move of an attacker who holds no key but reads everything the daemon writes."""
    kind, target, pick, fresh, lo, hi, advance = step
    i = target % d.n
    source = d.pool[pick % len(d.pool)] if d.pool else fresh
    if kind == "pool":
        d.send(i, source)
    elif kind == "random":
        d.send(i, fresh)
    elif kind == "partial":
        lo, hi = min(lo, hi), max(lo, hi)
        d.send(i, source[lo:hi] or source[:1])
    elif kind == "timer":
        d.timer(i, advance)
    else:
        d.close(i)


def run_attack(
    auth: HashType, key: Key, seed: bytes, n: int, moves: list[Step], shared: bool
) -> Daemon:
    d = Daemon(auth, key, seed, n, IssuedChallenges() if shared else None)
    for step in moves:
        attack(d, step)
        if shared:
            assert d.authenticated() == [], step
    return d


auths = st.sampled_from(corpus.SIGNED_TYPES)
keys = st.sampled_from([KEY, OTHER_KEY]) | st.binary(min_size=1, max_size=64).map(Key)
seeds = st.binary(min_size=8, max_size=8)
counts = st.integers(2, 5)


@fuzz_settings(1000)
@given(auths, keys, seeds, counts, st.lists(steps, max_size=40))
def test_an_attacker_without_the_key_never_authenticates(
    auth: HashType, key: Key, seed: bytes, n: int, moves: list[Step]
) -> None:
    d = run_attack(auth, key, seed, n, moves, shared=True)
    assert d.authenticated() == []
    refused = sum(s.reflected for s in d.sessions)
    event(f"reflections refused: {min(refused, 2)}")
    event(f"sessions answered C1: {sum(len(w) >= 2 * C for w in d.written)}")


# -- positive control: the harness can succeed -----------------------------------------------------


def honest_pieces(cuts: set[int]) -> list[tuple[int, int]]:
    """A client's 128 bytes (C1, then its answer) cut into pieces; 64 is always a cut, since
    the answer can only be computed once the daemon's challenge has arrived."""
    bounds = sorted({0, C, 2 * C} | cuts)
    return list(itertools.pairwise(bounds))


@fuzz_settings(300)
@given(auths, keys, seeds, counts, st.data())
def test_a_client_with_the_key_authenticates_every_session(
    auth: HashType, key: Key, seed: bytes, n: int, data: st.DataObject
) -> None:
    d = Daemon(auth, key, seed, n, IssuedChallenges())
    pieces = [
        honest_pieces(data.draw(st.sets(st.integers(1, 2 * C - 1), max_size=5))) for _ in range(n)
    ]
    order = data.draw(st.permutations([i for i in range(n) for _ in pieces[i]]))
    for i in order:
        lo, hi = pieces[i].pop(0)
        if hi <= C:  # part of the client's challenge
            d.send(i, unpredictable(seed, b"client", i)[lo:hi])
        else:  # part of the answer to the challenge the daemon just sent
            c2 = bytes(d.written[i][C : 2 * C])
            assert c2 == d.challenges[i]
            d.send(i, key.digest(auth, c2)[lo - C : hi - C])
    assert d.authenticated() == list(range(n))
    assert not any(s.reflected for s in d.sessions)
    registry = d.registry
    assert registry is not None and len(registry) == n  # every challenge retired, none live
    assert not any(registry.issued(c, d.now + registry.window) for c in d.challenges)


# -- without the shared registry the attack works -------------------------------------------------


def reflect(auth: HashType, issued: IssuedChallenges | None) -> tuple[ServerSession, ServerSession]:
    """The attack in three writes: any C1 to A, A's challenge as C1 to B, B's answer to A."""
    a, b = (
        ServerSession(
            auth=auth,
            key=KEY,
            challenge=unpredictable(b"fixed", b"daemon", i),
            now=0.0,
            issued=issued,
        )
        for i in (0, 1)
    )
    a.receive_data(b"\x11" * C, 0.1)
    c2_a = a.data_to_send()[C:]
    assert c2_a == unpredictable(b"fixed", b"daemon", 0)
    b.receive_data(c2_a, 0.2)  # B computes R(C2_A) for us, unless it refuses
    a.receive_data(b.data_to_send()[:C], 0.3)
    return a, b


@pytest.mark.parametrize("auth", corpus.SIGNED_TYPES, ids=lambda h: h.label)
def test_without_the_registry_the_reflection_attack_authenticates(auth: HashType) -> None:
    """Why sessions must share the registry: each one alone answers any 64 bytes."""
    a, b = reflect(auth, None)
    assert a.phase is Phase.AUTHENTICATED  # A accepted an answer the daemon computed itself
    assert b.phase is Phase.AWAIT_RESPONSE and not b.reflected


@pytest.mark.parametrize("auth", corpus.SIGNED_TYPES, ids=lambda h: h.label)
def test_with_the_registry_the_same_sequence_is_refused(auth: HashType) -> None:
    registry = IssuedChallenges()
    a, b = reflect(auth, registry)
    assert b.phase is Phase.FAILED and b.reflected
    assert b.failure is not None and "reflection" in b.failure
    assert b.data_to_send() == b""  # B computed and sent nothing
    assert a.phase is Phase.AWAIT_RESPONSE  # A never got an answer to present
    assert not a.reflected


def test_a_finished_sessions_challenge_is_still_refused_within_the_window() -> None:
    registry = IssuedChallenges(window=60.0)
    a, b, c = (
        ServerSession(
            auth=HashType.SHA256, key=KEY, challenge=bytes([i]) * C, now=0.0, issued=registry
        )
        for i in (1, 2, 3)
    )
    a.receive_data(b"\x11" * C, 0.0)
    a.connection_closed()  # retired at 0.0
    b.receive_data(bytes([1]) * C, 59.0)
    assert b.reflected and b.phase is Phase.FAILED
    c.receive_data(bytes([1]) * C, 61.0)  # forgotten: harmless, A can never use an answer now
    assert not c.reflected and c.phase is Phase.AWAIT_RESPONSE


def test_the_harness_finds_the_attack_without_the_registry() -> None:
    """The attacker's moves are strong enough: hypothesis finds the reflection by itself when
    the sessions do not share a registry (so the property above is not vacuous)."""
    found = find(
        st.tuples(seeds, counts, st.lists(steps, max_size=12)),
        lambda run: bool(
            run_attack(HashType.SHA256, KEY, run[0], run[1], run[2], False).authenticated()
        ),
        settings=settings(
            max_examples=5000,
            database=None,
            derandomize=True,
            deadline=None,
            phases=[Stage.generate],  # any example will do: no shrinking
        ),
    )
    seed, n, moves = found
    d = run_attack(HashType.SHA256, KEY, seed, n, moves, shared=False)
    assert d.authenticated()
    shared = run_attack(HashType.SHA256, KEY, seed, n, moves, shared=True)
    assert shared.authenticated() == []  # the same moves against shared sessions: refused
    assert any(s.reflected for s in shared.sessions)
