"""Fuzzing ``ServerSession``: arbitrary byte streams, arbitrary chunking, arbitrary clock advances.

Each generated run is checked step by step against a small model of the exchange written from
the session's docstring (docs/protocol.md): the client's challenge C1 (64 bytes) is answered
with ``pad64(H(key||C1))`` and our challenge C2; the next 64 bytes must be ``pad64(H(key||C2))``.
Each waiting phase has its own deadline, ``step_timeout`` after it began. Properties:

- nothing raises, except ``RuntimeError`` from ``send_result``/``send_hostlist`` before
  authentication (documented misuse) and ``ValueError`` from a constructor given no key or a
  challenge of the wrong size;
- AUTHENTICATED is reached only with the correct answer to C2, never after a timeout or close;
- FAILED is final and silent; output is exactly the model's, at most 128 bytes before
  authentication plus the one answer after it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz import corpus
from tests.fuzz.corpus import KEY, OTHER_KEY, fuzz_settings
from tests.unit import refvectors
from xvmd.protocol.auth import Key
from xvmd.protocol.session import AUTH_STEP_TIMEOUT, Phase, ServerSession
from xvmd.protocol.wire import (
    CHALLENGE_SIZE,
    HOST_RECORD_SIZE,
    HashType,
    HostRecord,
    Result,
    encode_hostlist,
)

WAITING = (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE)


@dataclass
class Model:
    """What the session must do, from the protocol description alone."""

    auth: HashType
    key: Key | None
    challenge: bytes
    timeout: float
    now: float
    phase: Phase = Phase.AWAIT_CHALLENGE
    deadline: float | None = None
    fed: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    sent: int = 0

    def __post_init__(self) -> None:
        if self.auth is HashType.NONE:
            self.phase = Phase.AUTHENTICATED
        else:
            self.deadline = self.now + self.timeout

    @property
    def answer(self) -> bytes:
        assert self.key is not None
        return self.key.digest(self.auth, self.challenge)

    def fail(self) -> None:
        self.phase, self.deadline = Phase.FAILED, None
        self.pending.clear()

    def receive(self, data: bytes, now: float) -> None:
        if self.phase not in WAITING:
            return
        self.fed += data
        assert self.key is not None
        if self.phase is Phase.AWAIT_CHALLENGE and len(self.fed) >= 64:
            self.pending += self.key.digest(self.auth, bytes(self.fed[:64])) + self.challenge
            self.phase, self.deadline = Phase.AWAIT_RESPONSE, now + self.timeout
        if self.phase is Phase.AWAIT_RESPONSE and len(self.fed) >= 128:
            if bytes(self.fed[64:128]) == self.answer:
                self.phase, self.deadline = Phase.AUTHENTICATED, None
            else:
                self.fail()

    def timer(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            self.fail()

    def close(self) -> None:
        if self.phase in WAITING:
            self.fail()


def new_pair(
    auth: HashType, key: Key | None, challenge: bytes, now: float, timeout: float
) -> tuple[ServerSession, Model]:
    s = ServerSession(auth=auth, key=key, challenge=challenge, now=now, step_timeout=timeout)
    return s, Model(auth, key, challenge, timeout, now)


def compare(s: ServerSession, m: Model) -> None:
    assert s.phase is m.phase
    assert s.deadline == m.deadline
    assert (s.failure is not None) == (m.phase is Phase.FAILED)
    assert 0 <= s.bytes_wanted <= CHALLENGE_SIZE
    if m.phase not in WAITING:
        assert s.bytes_wanted == 0


# -- event streams -----------------------------------------------------------------------------

advances = st.one_of(
    st.just(0.0),
    st.floats(0, 2 * AUTH_STEP_TIMEOUT, allow_nan=False),
    st.sampled_from([AUTH_STEP_TIMEOUT, AUTH_STEP_TIMEOUT - 1e-9, 1e-9, 1e9]),
)
chunks = st.binary(max_size=200)


@st.composite
def client_bytes(draw: st.DrawFn) -> list[tuple[str, object]]:
    """Events; the special chunk "ANSWER" means the correct answer, "NEAR" a bit flip of it."""
    events: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(
            st.sampled_from(
                [
                    *("data", "data", "data", "answer", "near", "advance", "timer", "close"),
                    *("drain", "result", "hostlist"),
                ]
            )
        )
        if kind == "data":
            events.append(("data", draw(chunks)))
        elif kind in ("answer", "near"):
            events.append((kind, draw(st.integers(0, 64 * 8 - 1))))
        elif kind == "advance":
            events.append(("advance", draw(advances)))
        elif kind == "hostlist":
            n = draw(st.integers(0, 5))
            events.append(("hostlist", [HostRecord(f"vm{i}", f"u{i}", i) for i in range(n)]))
        elif kind == "result":
            events.append(("result", draw(st.sampled_from(list(Result)))))
        else:
            events.append((kind, None))
    return events


def run_events(
    s: ServerSession, m: Model, events: list[tuple[str, object]], split: random.Random
) -> None:
    now = m.now
    total_out = 0
    for kind, arg in events:
        if kind in ("data", "answer", "near"):
            if kind == "data":
                assert isinstance(arg, bytes)
                data = arg
            else:
                assert isinstance(arg, int)
                # the correct answer to C2 (possibly preceded by filler up to the answer slot)
                have = len(m.fed)
                filler = b"\x5a" * max(64 - have, 0)
                ans = m.answer if m.key is not None else b"\0" * 64
                if kind == "near":
                    ans = corpus.flip_bits(ans, [arg])
                data = filler + ans
            # arbitrary chunking of the same bytes
            while True:
                cut = split.randint(0, len(data))
                s.receive_data(data[:cut], now)
                m.receive(data[:cut], now)
                compare(s, m)
                data = data[cut:]
                if not data:
                    break
        elif kind == "advance":
            assert isinstance(arg, float)
            now += arg
        elif kind == "timer":
            s.handle_timer(now)
            m.timer(now)
        elif kind == "close":
            s.connection_closed()
            m.close()
        elif kind == "drain":
            out = s.data_to_send()
            assert out == bytes(m.pending)
            total_out += len(out)
            m.pending.clear()
        elif kind in ("result", "hostlist"):
            if m.phase is Phase.AUTHENTICATED:
                if kind == "result":
                    assert isinstance(arg, Result)
                    s.send_result(arg)
                    m.pending.append(int(arg))
                else:
                    assert isinstance(arg, list)
                    s.send_hostlist(arg)
                    m.pending += encode_hostlist(arg)
                m.phase = Phase.DONE
            else:
                before = s.phase
                with pytest.raises(RuntimeError):
                    if kind == "result":
                        assert isinstance(arg, Result)
                        s.send_result(arg)
                    else:
                        assert isinstance(arg, list)
                        s.send_hostlist(arg)
                assert s.phase is before
        compare(s, m)
    out = s.data_to_send()
    assert out == bytes(m.pending)
    total_out += len(out)
    # Bounded output: R1 + C2, then one result byte or a hostlist of at most 5 records.
    assert total_out <= 2 * CHALLENGE_SIZE + 1 + (5 + 1) * HOST_RECORD_SIZE + 1


auths = st.sampled_from([HashType.NONE, *corpus.SIGNED_TYPES])
keys = st.sampled_from([KEY, OTHER_KEY]) | st.binary(min_size=1, max_size=100).map(Key)


@fuzz_settings(800)
@given(
    auths,
    keys,
    st.binary(min_size=CHALLENGE_SIZE, max_size=CHALLENGE_SIZE),
    st.floats(0, 1e9, allow_nan=False),
    st.floats(0, 60, allow_nan=False),
    client_bytes(),
    st.randoms(use_true_random=False),
)
def test_session_follows_the_model_on_any_stream(
    auth: HashType,
    key: Key,
    challenge: bytes,
    start: float,
    timeout: float,
    events: list[tuple[str, object]],
    split: random.Random,
) -> None:
    s, m = new_pair(auth, key, challenge, start, timeout)
    compare(s, m)
    run_events(s, m, events, split)
    event(f"ended {s.phase.value}")
    if s.phase in (Phase.AUTHENTICATED, Phase.DONE) and auth is not HashType.NONE:
        assert bytes(m.fed[64:128]) == key.digest(auth, challenge)


@fuzz_settings(400)
@given(auths, keys, st.binary(max_size=300), st.randoms(use_true_random=False))
def test_random_streams_never_authenticate(
    auth: HashType, key: Key, stream: bytes, split: random.Random
) -> None:
    """Bytes that do not contain the answer to a fresh challenge never authenticate."""
    if auth is HashType.NONE:
        return
    challenge = random.Random(stream).randbytes(CHALLENGE_SIZE)  # unknown to the stream
    s = ServerSession(auth=auth, key=key, challenge=challenge, now=0.0)
    out = b""
    rest = stream
    while rest:
        cut = split.randint(1, len(rest))
        s.receive_data(rest[:cut], 1.0)
        out += s.data_to_send()
        rest = rest[cut:]
    assert s.phase is not Phase.AUTHENTICATED or stream[64:128] == key.digest(auth, challenge)
    assert len(out) in (0, 2 * CHALLENGE_SIZE)
    if out:
        assert out == key.digest(auth, stream[:64]) + challenge


@fuzz_settings(300)
@given(
    st.sampled_from(corpus.SIGNED_TYPES),
    keys,
    st.binary(min_size=64, max_size=64),
    st.binary(min_size=64, max_size=64),
    # strictly inside the step: 100.0 + 9.999999999999996 would round to the deadline itself
    st.lists(st.floats(0, AUTH_STEP_TIMEOUT - 1e-6), min_size=2, max_size=2),
    st.randoms(use_true_random=False),
)
def test_a_correct_client_always_authenticates_in_time(
    auth: HashType,
    key: Key,
    c1: bytes,
    challenge: bytes,
    delays: list[float],
    split: random.Random,
) -> None:
    """Liveness: any chunking, any delay below the step timeout, timers checked in between."""
    now = 100.0
    s = ServerSession(auth=auth, key=key, challenge=challenge, now=now)
    out = b""
    for part, delay in zip((c1, key.digest(auth, challenge)), delays, strict=True):
        now += delay
        s.handle_timer(now)
        rest = part
        while rest:
            cut = split.randint(1, len(rest))
            s.receive_data(rest[:cut], now)
            rest = rest[cut:]
        out += s.data_to_send()
    assert s.phase is Phase.AUTHENTICATED
    assert out == key.digest(auth, c1) + challenge
    s.send_result(Result.SUCCESS)
    assert s.data_to_send() == b"\0" and s.phase is Phase.DONE


@fuzz_settings(200)
@given(
    auths,
    st.none() | keys | st.just(Key(b"")),
    st.binary(max_size=130),
    st.floats(allow_nan=False),
)
def test_constructor_rejects_misuse_with_value_error_only(
    auth: HashType, key: Key | None, challenge: bytes, now: float
) -> None:
    try:
        s = ServerSession(auth=auth, key=key, challenge=challenge, now=now)
    except ValueError:
        assert len(challenge) != CHALLENGE_SIZE or (
            auth is not HashType.NONE and (key is None or not key.data)
        )
        return
    assert len(challenge) == CHALLENGE_SIZE
    assert s.phase is (Phase.AUTHENTICATED if auth is HashType.NONE else Phase.AWAIT_CHALLENGE)


def test_captured_exchanges_authenticate_under_any_chunking() -> None:
    """The real fence_xvm's bytes, replayed with the real daemon's challenge, in random pieces."""
    exchanges = refvectors.authenticated_exchanges()
    ref = corpus.reference_key()
    if not exchanges or ref is None:
        pytest.skip(refvectors.SKIP_REASON)
    rng = random.Random(1229)
    for ex in exchanges:
        client = b"".join(ex.client())
        daemon = b"".join(ex.daemon())
        challenge = daemon[64:128]
        for _ in range(corpus.examples(200)):
            s = ServerSession(auth=HashType.SHA256, key=ref, challenge=challenge, now=0.0)
            rest, out = client, b""
            while rest and s.phase in WAITING:
                cut = rng.randint(1, len(rest))
                s.receive_data(rest[:cut], 1.0)
                out += s.data_to_send()
                rest = rest[cut:]
            assert s.phase is Phase.AUTHENTICATED
            assert out == daemon[:128]
            # One flipped bit anywhere in the client's answer: refused.
            bit = rng.randrange(64 * 8)
            s = ServerSession(auth=HashType.SHA256, key=ref, challenge=challenge, now=0.0)
            s.receive_data(client[:64] + corpus.flip_bits(client[64:128], [bit]), 1.0)
            assert s.phase is Phase.FAILED and s.data_to_send() == b""
