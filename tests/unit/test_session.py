"""The daemon side of the TCP exchange, replayed against the captured real sessions."""

from __future__ import annotations

import pytest

from tests.unit import refvectors
from tests.unit.refvectors import TEST_DOMAIN, TEST_UUID, TcpExchange
from xvmd.protocol.auth import Key
from xvmd.protocol.session import AUTH_STEP_TIMEOUT, Phase, ServerSession
from xvmd.protocol.wire import HashType, HostRecord, Result, encode_hostlist

AUTH_EXCHANGES = refvectors.authenticated_exchanges()
RESULT_EXCHANGES = [t for t in AUTH_EXCHANGES if "_list_" not in t.session]
PLAIN_RESULT_EXCHANGES = [
    t for t in refvectors.tcp_exchanges() if "auth-none" in t.session and "_list_" not in t.session
]

KEY = Key(b"unit-test key\n")
CHALLENGE = bytes(range(64))
CLIENT_CHALLENGE = bytes(range(100, 164))


def _session(now: float = 0.0, challenge: bytes = CHALLENGE, key: Key = KEY) -> ServerSession:
    return ServerSession(auth=HashType.SHA256, key=key, challenge=challenge, now=now)


def _authenticate(s: ServerSession, now: float = 0.0) -> bytes:
    s.receive_data(CLIENT_CHALLENGE, now)
    out = s.data_to_send()
    s.receive_data(KEY.digest(HashType.SHA256, CHALLENGE), now)
    return out


def phase(s: ServerSession) -> Phase:
    """The current phase (a call, so type checkers do not narrow it across steps)."""
    return s.phase


def _parts(ex: TcpExchange) -> tuple[bytes, bytes, bytes, bytes, list[bytes]]:
    """C1, R1, C2, R2 and the daemon's segments after its challenge."""
    client, daemon = ex.client(), ex.daemon()
    return client[0], daemon[0], daemon[1], client[1], daemon[2:]


# -- replaying the real sessions -----------------------------------------------------------------


@pytest.mark.parametrize("ex", RESULT_EXCHANGES, ids=lambda t: t.session)
def test_replay_captured_session(ex: TcpExchange, ref_key: Key) -> None:
    c1, r1, c2, r2, tail = _parts(ex)
    s = ServerSession(auth=HashType.SHA256, key=ref_key, challenge=c2, now=0.0)
    assert phase(s) is Phase.AWAIT_CHALLENGE
    assert s.bytes_wanted == 64
    s.receive_data(c1, 0.5)
    assert phase(s) is Phase.AWAIT_RESPONSE
    assert s.data_to_send() == r1 + c2
    s.receive_data(r2, 1.0)
    assert phase(s) is Phase.AUTHENTICATED
    assert s.failure is None
    assert s.deadline is None
    assert s.data_to_send() == b""
    s.send_result(Result(tail[0][0]))
    assert s.data_to_send() == b"".join(tail)
    assert phase(s) is Phase.DONE


def test_replay_01_status_gives_success_byte(ref_key: Key) -> None:
    c1, r1, c2, r2, tail = _parts(refvectors.exchange("01_status"))
    s = ServerSession(auth=HashType.SHA256, key=ref_key, challenge=c2, now=0.0)
    s.receive_data(c1, 0.0)
    assert s.data_to_send()[:64] == r1
    s.receive_data(r2, 0.0)
    assert phase(s) is Phase.AUTHENTICATED
    s.send_result(Result.SUCCESS)
    assert s.data_to_send() == b"\x00" == tail[0]


def test_replay_captured_list_session(ref_key: Key) -> None:
    c1, r1, c2, r2, tail = _parts(refvectors.exchange("05_list"))
    s = ServerSession(auth=HashType.SHA256, key=ref_key, challenge=c2, now=0.0)
    s.receive_data(c1 + r2, 0.0)
    assert phase(s) is Phase.AUTHENTICATED
    assert s.data_to_send() == r1 + c2
    s.send_hostlist([HostRecord(TEST_DOMAIN, TEST_UUID, 1)])
    ours, theirs = s.data_to_send(), b"".join(tail)
    assert len(ours) == len(theirs) == 262
    assert {i for i in range(262) if ours[i] != theirs[i]} <= {1 + 63, 1 + 127, 1 + 129}


def test_wrong_key_answer_from_capture_fails(ref_key: Key) -> None:
    """The client's real answer to C2 does not answer another challenge."""
    c1, _r1, _c2, r2, _tail = _parts(refvectors.exchange("01_status"))
    s = ServerSession(auth=HashType.SHA256, key=ref_key, challenge=CHALLENGE, now=0.0)
    s.receive_data(c1 + r2, 0.0)
    assert phase(s) is Phase.FAILED


@pytest.mark.parametrize("ex", PLAIN_RESULT_EXCHANGES, ids=lambda t: t.session)
def test_auth_none_replay(ex: TcpExchange) -> None:
    assert ex.client() == []
    s = ServerSession(auth=HashType.NONE, key=None, challenge=CHALLENGE, now=0.0)
    s.send_result(Result(ex.daemon()[0][0]))
    assert s.data_to_send() == b"".join(ex.daemon())


# -- framing -------------------------------------------------------------------------------------


def test_one_byte_at_a_time() -> None:
    s = _session()
    for i, b in enumerate(CLIENT_CHALLENGE):
        assert s.bytes_wanted == 64 - i
        assert s.data_to_send() == b""
        s.receive_data(bytes([b]), 0.0)
    assert phase(s) is Phase.AWAIT_RESPONSE
    assert s.data_to_send() == KEY.digest(HashType.SHA256, CLIENT_CHALLENGE) + CHALLENGE
    answer = KEY.digest(HashType.SHA256, CHALLENGE)
    for i, b in enumerate(answer):
        assert phase(s) is Phase.AWAIT_RESPONSE
        assert s.bytes_wanted == 64 - i
        s.receive_data(bytes([b]), 0.0)
    assert phase(s) is Phase.AUTHENTICATED
    assert s.bytes_wanted == 0
    assert s.data_to_send() == b""


def test_coalesced_challenge_and_answer() -> None:
    s = _session()
    s.receive_data(CLIENT_CHALLENGE + KEY.digest(HashType.SHA256, CHALLENGE), 0.0)
    assert phase(s) is Phase.AUTHENTICATED
    assert s.data_to_send() == KEY.digest(HashType.SHA256, CLIENT_CHALLENGE) + CHALLENGE


def test_odd_fragments() -> None:
    stream = CLIENT_CHALLENGE + KEY.digest(HashType.SHA256, CHALLENGE)
    s = _session()
    for cut in ((0, 3), (3, 70), (70, 71), (71, 128)):
        s.receive_data(stream[cut[0] : cut[1]], 0.0)
    assert phase(s) is Phase.AUTHENTICATED


def test_bytes_after_authentication_are_ignored() -> None:
    s = _session()
    s.receive_data(CLIENT_CHALLENGE + KEY.digest(HashType.SHA256, CHALLENGE) + b"junk", 0.0)
    assert phase(s) is Phase.AUTHENTICATED
    s.data_to_send()
    s.receive_data(b"more junk", 0.0)
    assert phase(s) is Phase.AUTHENTICATED
    assert s.data_to_send() == b""


# -- failures ------------------------------------------------------------------------------------


def test_wrong_answer_fails_and_sends_nothing_more() -> None:
    s = _session()
    s.receive_data(CLIENT_CHALLENGE, 0.0)
    assert len(s.data_to_send()) == 128
    s.receive_data(Key(b"other key").digest(HashType.SHA256, CHALLENGE), 0.0)
    assert phase(s) is Phase.FAILED
    assert s.failure
    assert "challenge" in s.failure
    assert s.deadline is None
    assert s.data_to_send() == b""
    s.receive_data(KEY.digest(HashType.SHA256, CHALLENGE), 0.0)  # a second try is not allowed
    assert phase(s) is Phase.FAILED
    assert s.data_to_send() == b""
    with pytest.raises(RuntimeError):
        s.send_result(Result.SUCCESS)
    with pytest.raises(RuntimeError):
        s.send_hostlist([])
    assert s.data_to_send() == b""


def test_answer_with_nonzero_padding_fails() -> None:
    s = _session()
    answer = bytearray(KEY.digest(HashType.SHA256, CHALLENGE))
    answer[63] = 1
    s.receive_data(CLIENT_CHALLENGE + bytes(answer), 0.0)
    assert phase(s) is Phase.FAILED


def test_answer_with_wrong_hash_type_fails() -> None:
    s = _session()
    s.receive_data(CLIENT_CHALLENGE + KEY.digest(HashType.SHA512, CHALLENGE), 0.0)
    assert phase(s) is Phase.FAILED


def test_failure_discards_unsent_output() -> None:
    s = _session()
    s.receive_data(CLIENT_CHALLENGE + b"\0" * 64, 0.0)
    assert phase(s) is Phase.FAILED
    assert s.data_to_send() == b""


# -- timeouts ------------------------------------------------------------------------------------


def test_timeout_waiting_for_challenge() -> None:
    s = _session(now=100.0)
    assert s.deadline == 100.0 + AUTH_STEP_TIMEOUT
    s.handle_timer(100.0)
    s.handle_timer(109.999)
    assert phase(s) is Phase.AWAIT_CHALLENGE
    assert s.failure is None
    s.handle_timer(110.0)
    assert phase(s) is Phase.FAILED
    assert s.failure is not None and "timed out" in s.failure
    assert "await-challenge" in s.failure
    assert s.data_to_send() == b""


def test_timeout_waiting_for_response_restarts_per_step() -> None:
    s = _session(now=100.0)
    s.receive_data(CLIENT_CHALLENGE, 108.0)
    assert s.deadline == 118.0
    s.handle_timer(111.0)  # past the first step's deadline, within the second's
    assert phase(s) is Phase.AWAIT_RESPONSE
    s.handle_timer(117.9)
    assert phase(s) is Phase.AWAIT_RESPONSE
    s.handle_timer(125.0)
    assert phase(s) is Phase.FAILED
    assert s.failure is not None and "await-response" in s.failure
    assert s.data_to_send() == b""  # R1 + C2 were never collected: dropped with the failure
    s.receive_data(KEY.digest(HashType.SHA256, CHALLENGE), 125.5)
    assert phase(s) is Phase.FAILED


def test_custom_step_timeout() -> None:
    s = ServerSession(auth=HashType.SHA256, key=KEY, challenge=CHALLENGE, now=5.0, step_timeout=0.5)
    s.handle_timer(5.4)
    assert phase(s) is Phase.AWAIT_CHALLENGE
    s.handle_timer(5.5)
    assert phase(s) is Phase.FAILED


def test_no_timeout_once_authenticated() -> None:
    s = _session(now=0.0)
    _authenticate(s, now=1.0)
    assert phase(s) is Phase.AUTHENTICATED
    s.handle_timer(1e9)
    assert phase(s) is Phase.AUTHENTICATED
    s.send_result(Result.OFF)
    assert s.data_to_send() == b"\x02"


# -- connection closed ---------------------------------------------------------------------------


def test_close_while_awaiting_challenge() -> None:
    s = _session()
    s.receive_data(CLIENT_CHALLENGE[:10], 0.0)
    s.connection_closed()
    assert phase(s) is Phase.FAILED
    assert s.failure is not None and "closed" in s.failure


def test_close_while_awaiting_response() -> None:
    s = _session()
    s.receive_data(CLIENT_CHALLENGE, 0.0)
    s.connection_closed()
    assert phase(s) is Phase.FAILED
    assert s.data_to_send() == b""


def test_close_after_authentication_is_not_a_failure() -> None:
    s = _session()
    _authenticate(s)
    s.connection_closed()
    assert phase(s) is Phase.AUTHENTICATED
    assert s.failure is None


# -- auth none, results and the hostlist ----------------------------------------------------------


def test_auth_none_starts_authenticated() -> None:
    s = ServerSession(auth=HashType.NONE, key=None, challenge=CHALLENGE, now=0.0)
    assert phase(s) is Phase.AUTHENTICATED
    assert s.deadline is None
    assert s.bytes_wanted == 0
    s.handle_timer(1e6)
    assert phase(s) is Phase.AUTHENTICATED
    s.send_result(Result.FAIL)
    assert s.data_to_send() == b"\x01"
    assert phase(s) is Phase.DONE


@pytest.mark.parametrize("result", list(Result), ids=lambda r: r.label)
def test_send_result_writes_one_byte(result: Result) -> None:
    s = _session()
    _authenticate(s)
    s.send_result(result)
    assert s.data_to_send() == bytes([int(result)])
    assert phase(s) is Phase.DONE
    with pytest.raises(RuntimeError):
        s.send_result(result)  # exactly one answer per session


def test_send_result_before_authentication_raises() -> None:
    s = _session()
    with pytest.raises(RuntimeError):
        s.send_result(Result.SUCCESS)
    s.receive_data(CLIENT_CHALLENGE, 0.0)
    with pytest.raises(RuntimeError):
        s.send_result(Result.SUCCESS)
    with pytest.raises(RuntimeError):
        s.send_hostlist([HostRecord("a", "b", 1)])
    assert s.data_to_send() == KEY.digest(HashType.SHA256, CLIENT_CHALLENGE) + CHALLENGE


def test_send_hostlist_format() -> None:
    s = _session()
    _authenticate(s)
    records = [HostRecord("vm-b", "uuid-b", 5), HostRecord("VM-a", "uuid-a", 1)]
    s.send_hostlist(records)
    out = s.data_to_send()
    assert out == encode_hostlist(records)
    assert out[0] == 0xFD
    assert out[1:5] == b"VM-a"
    assert out[1 + 64 : 1 + 70] == b"uuid-a"
    assert out[1 + 128] == 1
    assert out[131:135] == b"vm-b"
    assert out[131 + 128] == 5
    assert out[261:391] == b"\0" * 130
    assert out[391:] == b"\x00"
    assert phase(s) is Phase.DONE


def test_send_hostlist_final_byte() -> None:
    s = ServerSession(auth=HashType.NONE, key=None, challenge=CHALLENGE, now=0.0)
    s.send_hostlist([], Result.FAIL)
    assert s.data_to_send() == b"\xfd" + b"\0" * 130 + b"\x01"


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        ServerSession(auth=HashType.SHA256, key=None, challenge=CHALLENGE, now=0.0)
    with pytest.raises(ValueError):
        ServerSession(auth=HashType.SHA256, key=Key(b""), challenge=CHALLENGE, now=0.0)
    with pytest.raises(ValueError):
        ServerSession(auth=HashType.SHA256, key=KEY, challenge=CHALLENGE[:32], now=0.0)


@pytest.mark.parametrize("ht", [HashType.SHA1, HashType.SHA256, HashType.SHA512])
def test_each_auth_hash(ht: HashType) -> None:
    s = ServerSession(auth=ht, key=KEY, challenge=CHALLENGE, now=0.0)
    s.receive_data(CLIENT_CHALLENGE, 0.0)
    assert s.data_to_send() == KEY.digest(ht, CLIENT_CHALLENGE) + CHALLENGE
    s.receive_data(KEY.digest(ht, CHALLENGE), 0.0)
    assert phase(s) is Phase.AUTHENTICATED
