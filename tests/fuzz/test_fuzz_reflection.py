"""Challenge reflection: no session authenticates with an answer the daemon computed itself.

The client challenges first and the daemon answers ``R(x) = pad64(H(key || x))`` for any 64
bytes x (docs/protocol.md §4.2). With several sessions open, an attacker without the key could
send session A's challenge C2 as the C1 of session B (of the same daemon, or of another daemon
holding the same key), read R(C2) from B and present it on A. xvmd's challenges carry an HMAC
tag of their random half (``Key.tagged_challenge``) and a C1 with a valid tag is refused
(xvmd/protocol/auth.py), which needs no shared state between sessions or daemons.

The harness: 2 to 5 ``ServerSession``s holding one key, each with its own unpredictable tagged
challenge. An attacker without the key drives them in any interleaving; at each
step it picks a session and writes 64 bytes chosen from everything any session wrote so far
(cut at 64-byte boundaries: answers R1 and challenges C2) or fresh bytes, or a piece of either
(partial writes, which shift the framing), or fires a timer, or closes. Properties:

- no session ever reaches AUTHENTICATED;
- a C1 equal to a challenge a session sent is refused as a reflection (``reflected``), and a
  C1 that no session ever sent is never called one.

Controls: the same harness with a client that holds the key authenticates every session in any
interleaving; with plain random challenges (untagged) the attack succeeds, both in a fixed
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
from xvmd.protocol.session import AUTH_STEP_TIMEOUT, Phase, ServerSession
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType

WAITING = (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE)
C = CHALLENGE_SIZE


def unpredictable(seed: bytes, label: bytes, i: int) -> bytes:
    """64 bytes nobody can guess without ``seed``: stands in for os.urandom. The properties
    assume the daemon's challenge cannot be guessed before it is sent; hypothesis's own bytes
    (zeros, repeats) never equal these."""
    return hashlib.sha512(label + seed + bytes([i])).digest()


def daemon_challenge(key: Key, seed: bytes, i: int, tagged: bool) -> bytes:
    """What the service sends as C2 (tagged), or a plain random challenge (the control)."""
    raw = unpredictable(seed, b"daemon", i)
    return key.tagged_challenge(raw[: C // 2]) if tagged else raw


class Daemon:
    """``n`` sessions holding one key (of one daemon or several) and all they wrote."""

    def __init__(self, auth: HashType, key: Key, seed: bytes, n: int, tagged: bool) -> None:
        self.now = 1000.0
        self.tagged = tagged
        self.challenges = [daemon_challenge(key, seed, i, tagged) for i in range(n)]
        self.sessions = [
            ServerSession(auth=auth, key=key, challenge=c, now=self.now) for c in self.challenges
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
        ever_sent = {bytes(w[C : 2 * C]) for w in self.written if len(w) >= 2 * C}
        if s.phase in WAITING:
            self.fed[i] += data
        s.receive_data(data, self.now)
        out = s.data_to_send()
        self.written[i] += out
        self.pool += [out[k : k + C] for k in range(0, len(out), C)]
        if completes_c1:
            self._check_c1(i, ever_sent)

    def _check_c1(self, i: int, ever_sent: set[bytes]) -> None:
        s, c1 = self.sessions[i], bytes(self.fed[i][:C])
        if self.tagged and c1 in ever_sent:
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
    auth: HashType, key: Key, seed: bytes, n: int, moves: list[Step], tagged: bool
) -> Daemon:
    d = Daemon(auth, key, seed, n, tagged)
    for step in moves:
        attack(d, step)
        if tagged:
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
    d = run_attack(auth, key, seed, n, moves, tagged=True)
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
    d = Daemon(auth, key, seed, n, tagged=True)
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


# -- without the tag the attack works -------------------------------------------------------------


def reflect(auth: HashType, tagged: bool, second: Key = KEY) -> tuple[ServerSession, ServerSession]:
    """The attack in three writes: any C1 to A, A's challenge as C1 to B, B's answer to A.
    B may belong to another daemon (another ``Key`` object with the same bytes)."""
    a, b = (
        ServerSession(auth=auth, key=k, challenge=daemon_challenge(k, b"fixed", i, tagged), now=0.0)
        for i, k in ((0, KEY), (1, second))
    )
    a.receive_data(b"\x11" * C, 0.1)
    c2_a = a.data_to_send()[C:]
    assert c2_a == daemon_challenge(KEY, b"fixed", 0, tagged)
    b.receive_data(c2_a, 0.2)  # B computes R(C2_A) for us, unless it refuses
    a.receive_data(b.data_to_send()[:C], 0.3)
    return a, b


@pytest.mark.parametrize("auth", corpus.SIGNED_TYPES, ids=lambda h: h.label)
def test_with_plain_random_challenges_the_reflection_attack_authenticates(auth: HashType) -> None:
    """Why the challenge must be tagged: a session alone answers any 64 bytes."""
    a, b = reflect(auth, tagged=False)
    assert a.phase is Phase.AUTHENTICATED  # A accepted an answer a daemon computed itself
    assert b.phase is Phase.AWAIT_RESPONSE and not b.reflected


@pytest.mark.parametrize("auth", corpus.SIGNED_TYPES, ids=lambda h: h.label)
@pytest.mark.parametrize("where", ["same daemon", "another daemon with the same key"])
def test_with_tagged_challenges_the_same_sequence_is_refused(auth: HashType, where: str) -> None:
    second = KEY if where == "same daemon" else Key(KEY.data)
    a, b = reflect(auth, tagged=True, second=second)
    assert b.phase is Phase.FAILED and b.reflected
    assert b.failure is not None and "reflection" in b.failure
    assert b.data_to_send() == b""  # B computed and sent nothing
    assert a.phase is Phase.AWAIT_RESPONSE  # A never got an answer to present
    assert not a.reflected


def test_a_tagged_challenge_is_refused_at_any_time_and_only_under_its_key() -> None:
    c2 = KEY.tagged_challenge(b"\x42" * (C // 2))
    late = ServerSession(auth=HashType.SHA256, key=KEY, challenge=bytes(C), now=0.0)
    late.receive_data(c2, 1e6)  # no memory to expire: the tag itself says who made it
    assert late.reflected and late.phase is Phase.FAILED
    other = ServerSession(auth=HashType.SHA256, key=OTHER_KEY, challenge=bytes(C), now=0.0)
    other.receive_data(c2, 0.0)  # another key's challenge: an ordinary C1 here
    assert not other.reflected and other.phase is Phase.AWAIT_RESPONSE


def test_the_harness_finds_the_attack_without_the_tag() -> None:
    """The attacker's moves are strong enough: hypothesis finds the reflection by itself when
    the challenges are plain random bytes (so the property above is not vacuous)."""
    found = find(
        st.tuples(seeds, counts, st.lists(steps, max_size=12)),
        lambda run: bool(
            run_attack(HashType.SHA256, KEY, run[0], run[1], run[2], tagged=False).authenticated()
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
    d = run_attack(HashType.SHA256, KEY, seed, n, moves, tagged=False)
    assert d.authenticated()
    tagged = run_attack(HashType.SHA256, KEY, seed, n, moves, tagged=True)
    assert tagged.authenticated() == []  # the same moves against tagged challenges: refused
    assert any(s.reflected for s in tagged.sessions)
