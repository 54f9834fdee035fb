"""The client side (``xvmd.protocol.client``): against the real ``ServerSession`` in memory, and
against the captured traffic of the stock client and daemon."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from tests.unit import refvectors
from tests.unit.refvectors import TEST_DOMAIN, TEST_UUID, TcpExchange, UdpVector
from xvmd.protocol.auth import Key, verify_request
from xvmd.protocol.client import (
    Answer,
    ClientError,
    ClientPhase,
    ClientSession,
    build_request,
    drive,
    op_for_action,
)
from xvmd.protocol.session import Phase, ServerSession
from xvmd.protocol.wire import HashType, HostRecord, Op, Result, parse_request

KEY = Key(b"client unit-test key\n")
OTHER = Key(b"another key\n")
C1 = bytes(range(100, 164))
NONCE = bytes(range(32))
SALT = bytes.fromhex("0a0b0c0d0e0f")
RECORDS = [
    HostRecord("vm-b", "00000000-0000-4000-8000-00000000000b", 1),
    HostRecord("VM-a", "00000000-0000-4000-8000-00000000000a", 5),
]
SORTED = (RECORDS[1], RECORDS[0])  # the daemon sorts case-insensitively
HASHES = list(HashType)
Respond = Callable[[ServerSession], None]


def result(r: Result) -> Respond:
    return lambda s: s.send_result(r)


def hostlist(final: Result = Result.SUCCESS) -> Respond:
    return lambda s: s.send_hostlist(RECORDS, final)


def server(auth: HashType, key: Key = KEY) -> ServerSession:
    k = None if auth is HashType.NONE else key
    return ServerSession(auth=auth, key=k, challenge=key.tagged_challenge(NONCE), now=0.0)


def client(op: Op, auth: HashType, key: Key = KEY) -> ClientSession:
    return ClientSession(op, auth=auth, key=key, challenge=C1)


def converse(c: ClientSession, s: ServerSession, respond: Respond) -> Answer:
    """Carry bytes both ways; when neither side has more to say, the daemon hangs up."""
    answered = False
    while True:
        to_daemon = c.data_to_send()
        s.receive_data(to_daemon, 0.0)
        if s.phase is Phase.AUTHENTICATED and not answered:
            respond(s)
            answered = True
        to_client = s.data_to_send()
        answer = c.receive_data(to_client)
        if answer is not None:
            return answer
        if not to_daemon and not to_client:
            return c.connection_closed()


def fails(reason: str, action: Callable[[], object]) -> ClientError:
    with pytest.raises(ClientError) as info:
        action()
    assert info.value.reason == reason, str(info.value)
    return info.value


def phase(c: ClientSession) -> ClientPhase:
    """The current phase (a call, so type checkers do not narrow it across steps)."""
    return c.phase


# -- the request datagram ------------------------------------------------------------------------


@pytest.mark.parametrize("hashtype", HASHES, ids=lambda h: h.label)
@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.label)
def test_request_for_every_op_and_hash_is_what_the_daemon_accepts(
    op: Op, hashtype: HashType
) -> None:
    domain = "" if op is Op.HOSTLIST else "vm-01"
    raw = build_request(
        op, domain, key=KEY, hashtype=hashtype, address="192.0.2.9", port=4321, seqno=77, salt=SALT
    )
    req = parse_request(raw)
    assert (req.op, req.hashtype, req.domain) == (op, hashtype, domain)
    assert (req.callback, req.seqno) == (("192.0.2.9", 4321), 77)
    signed = hashtype is not HashType.NONE
    assert req.random == (SALT if signed else b"\0" * 6)
    assert verify_request(req, hashtype, [OTHER, KEY]) is (KEY if signed else None)
    if signed:
        with pytest.raises(ValueError, match="key"):
            build_request(op, domain, key=None, hashtype=hashtype, address=None, port=0, seqno=1)


def test_unsigned_request_needs_no_key_and_has_no_digest() -> None:
    raw = build_request(
        Op.OFF, "vm", key=None, hashtype=HashType.NONE, address=None, port=0, seqno=3
    )
    assert raw[112:] == b"\0" * 64
    assert parse_request(raw).callback is None


def test_fence_xvm_actions_map_to_request_codes() -> None:
    assert op_for_action("monitor") is Op.DEVSTATUS
    assert op_for_action("LIST") is Op.HOSTLIST
    assert [op_for_action(o.name) for o in Op] == list(Op)
    with pytest.raises(ValueError, match="metadata"):
        op_for_action("metadata")
    with pytest.raises(ValueError, match="unknown"):
        op_for_action("explode")


# -- against the real ServerSession --------------------------------------------------------------


@pytest.mark.parametrize("auth", HASHES, ids=lambda h: h.label)
@pytest.mark.parametrize("op", [o for o in Op if o is not Op.HOSTLIST], ids=lambda o: o.label)
def test_every_op_and_auth_against_the_server_session(op: Op, auth: HashType) -> None:
    for r in (Result.SUCCESS, Result.FAIL, Result.OFF, Result.PERM):
        c, s = client(op, auth), server(auth)
        answer = converse(c, s, result(r))
        assert answer == Answer(r)
        assert answer.status is r
        assert phase(c) is ClientPhase.DONE and s.phase is Phase.DONE


@pytest.mark.parametrize("auth", HASHES, ids=lambda h: h.label)
def test_list_against_the_server_session(auth: HashType) -> None:
    answer = converse(client(Op.HOSTLIST, auth), server(auth), hostlist())
    assert answer.result is Result.HOSTLIST
    assert answer.records == SORTED
    assert answer.final is Result.SUCCESS and answer.status is Result.SUCCESS


def test_list_with_failed_final_byte_and_list_refused() -> None:
    answer = converse(
        client(Op.HOSTLIST, HashType.SHA256), server(HashType.SHA256), hostlist(Result.FAIL)
    )
    assert (answer.records, answer.status) == (SORTED, Result.FAIL)
    refused = converse(
        client(Op.HOSTLIST, HashType.SHA256), server(HashType.SHA256), result(Result.PERM)
    )
    assert refused == Answer(Result.PERM)


def test_the_client_challenges_first_and_answers_the_daemon() -> None:
    c, s = client(Op.STATUS, HashType.SHA512), server(HashType.SHA512)
    assert c.data_to_send() == C1
    assert c.bytes_wanted == 128  # the daemon's answer and its challenge come together
    s.receive_data(C1, 0.0)
    assert c.receive_data(s.data_to_send()) is None
    assert c.data_to_send() == KEY.digest(HashType.SHA512, KEY.tagged_challenge(NONCE))
    assert phase(c) is ClientPhase.AWAIT_RESULT and c.bytes_wanted == 1


@pytest.mark.parametrize("chunk", [1, 2, 3, 63, 64, 65, 129, 131, 1000])
def test_any_chunking_of_the_daemon_stream(chunk: int) -> None:
    s = server(HashType.SHA256)
    c = client(Op.HOSTLIST, HashType.SHA256)
    s.receive_data(c.data_to_send(), 0.0)
    head = s.data_to_send()
    for i in range(0, len(head), chunk):
        assert c.receive_data(head[i : i + chunk]) is None
    s.receive_data(c.data_to_send(), 0.0)
    s.send_hostlist(RECORDS)
    tail = s.data_to_send()
    answers = [c.receive_data(tail[i : i + chunk]) for i in range(0, len(tail), chunk)]
    assert answers[:-1] == [None] * (len(answers) - 1)
    assert answers[-1] == Answer(Result.HOSTLIST, SORTED, Result.SUCCESS)


def test_drive_runs_a_blocking_stream_and_reads_no_further_than_the_answer() -> None:
    s, c = server(HashType.SHA1), client(Op.HOSTLIST, HashType.SHA1)
    pending = bytearray()
    asked: list[int] = []

    def send(data: bytes) -> None:
        s.receive_data(data, 0.0)
        if s.phase is Phase.AUTHENTICATED:
            s.send_hostlist(RECORDS)
        pending.extend(s.data_to_send())

    def recv(n: int) -> bytes:
        asked.append(n)
        got = bytes(pending[:n])
        del pending[:n]
        return got

    assert drive(c, recv, send) == Answer(Result.HOSTLIST, SORTED, Result.SUCCESS)
    assert pending == b"" and asked == [128, 1, 130, 130, 130, 1]


# -- wrong keys and broken daemons ---------------------------------------------------------------


@pytest.mark.parametrize(
    "auth", [h for h in HASHES if h is not HashType.NONE], ids=lambda h: h.label
)
def test_wrong_key_is_an_explicit_failure(auth: HashType) -> None:
    c, s = client(Op.OFF, auth, key=OTHER), server(auth)
    err = fails("bad-answer", lambda: converse(c, s, result(Result.SUCCESS)))
    assert "wrong key" in str(err)
    assert phase(c) is ClientPhase.FAILED and c.answer is None
    assert c.data_to_send() == b""  # we never answer the challenge of a daemon that failed ours
    assert s.phase is Phase.AWAIT_RESPONSE


def test_mismatched_auth_types_fail_explicitly() -> None:
    fails(
        "bad-answer",
        lambda: converse(
            client(Op.OFF, HashType.SHA1), server(HashType.SHA256), result(Result.SUCCESS)
        ),
    )
    # Daemon without auth: its result byte arrives where the answer should be, then it closes.
    fails(
        "closed",
        lambda: converse(
            client(Op.OFF, HashType.SHA256), server(HashType.NONE), result(Result.SUCCESS)
        ),
    )
    # Client without auth: both wait, until the daemon times out and closes.
    fails(
        "closed",
        lambda: converse(
            client(Op.OFF, HashType.NONE), server(HashType.SHA256), result(Result.SUCCESS)
        ),
    )


def _full_stream(op: Op, respond: Respond) -> tuple[ClientSession, bytes]:
    """A fresh client and everything a sha256 daemon sends it, assuming it answers correctly."""
    s = server(HashType.SHA256)
    s.receive_data(C1 + KEY.digest(HashType.SHA256, KEY.tagged_challenge(NONCE)), 0.0)
    respond(s)
    return client(op, HashType.SHA256), s.data_to_send()


@pytest.mark.parametrize(
    ("op", "respond"),
    [(Op.STATUS, result(Result.OFF)), (Op.HOSTLIST, hostlist())],
    ids=["status", "list"],
)
def test_every_truncation_is_an_explicit_failure(op: Op, respond: Respond) -> None:
    _, stream = _full_stream(op, respond)
    for cut in range(len(stream)):
        c = client(op, HashType.SHA256)
        assert c.receive_data(stream[:cut]) is None
        err = fails("closed", c.connection_closed)
        assert c.error is err
        fails("closed", partial(c.receive_data, b"more"))  # stays failed
    c = client(op, HashType.SHA256)
    assert c.receive_data(stream) is not None
    assert c.connection_closed() == c.answer


def _garbled(op: Op, respond: Respond, at: int, byte: int) -> Callable[[], object]:
    c, stream = _full_stream(op, respond)
    bad = stream[:at] + bytes([byte]) + stream[at + 1 :]
    return lambda: c.receive_data(bad)


def test_garbled_daemon_bytes_are_explicit_failures() -> None:
    status, lst = result(Result.SUCCESS), hostlist()
    fails("bad-answer", _garbled(Op.STATUS, status, 5, 0x55))
    fails("unknown-result", _garbled(Op.STATUS, status, 128, 0x07))
    fails("unexpected-hostlist", _garbled(Op.STATUS, status, 128, 0xFD))
    last = 128 + 1 + 3 * 130
    fails("unknown-result", _garbled(Op.HOSTLIST, lst, last, 0xFD))
    fails("unknown-result", _garbled(Op.HOSTLIST, lst, last, 0x42))
    # A garbled terminator is read as a record, and the stream then ends too early.
    c, stream = _full_stream(Op.HOSTLIST, lst)
    bad = stream[: 129 + 2 * 130] + b"x" + stream[129 + 2 * 130 + 1 :]
    assert c.receive_data(bad) is None
    fails("closed", c.connection_closed)


def test_trailing_bytes_are_an_explicit_failure() -> None:
    c, stream = _full_stream(Op.STATUS, result(Result.SUCCESS))
    fails("trailing-data", lambda: c.receive_data(stream + b"\0"))
    c, stream = _full_stream(Op.STATUS, result(Result.SUCCESS))
    assert c.receive_data(stream) == Answer(Result.SUCCESS)
    fails("trailing-data", lambda: c.receive_data(b"\0"))
    assert c.answer is None


def test_constructor_refuses_what_cannot_authenticate() -> None:
    with pytest.raises(ValueError, match="key"):
        ClientSession(Op.OFF, auth=HashType.SHA256, key=None, challenge=C1)
    with pytest.raises(ValueError, match="key"):
        ClientSession(Op.OFF, auth=HashType.SHA256, key=Key(b""), challenge=C1)
    with pytest.raises(ValueError, match="challenge"):
        ClientSession(Op.OFF, auth=HashType.SHA256, key=KEY, challenge=C1[:63])
    assert ClientSession(Op.OFF, auth=HashType.NONE, key=None).data_to_send() == b""


# -- against the captured traffic ----------------------------------------------------------------


@pytest.mark.parametrize("vec", refvectors.udp_vectors(), ids=lambda v: v.id)
def test_build_request_reproduces_the_captured_datagram(vec: UdpVector, ref_key: Key) -> None:
    f = vec.fields
    raw = build_request(
        Op(f["request"]),
        f["domain"],
        key=ref_key,
        hashtype=HashType(f["hashtype"]),
        address=f["address"],
        port=f["port_le"],
        seqno=f["seqno_le"],
        salt=bytes.fromhex(f["random"]) if f["hashtype"] else b"\xff" * 6,  # unused unsigned
    )
    assert raw == vec.raw


def _expected(ex: TcpExchange) -> Answer:
    if "_list_" in ex.session:
        return Answer(Result.HOSTLIST, (HostRecord(TEST_DOMAIN, TEST_UUID, 1),), Result.SUCCESS)
    return Answer(Result(ex.daemon()[-1][0]))


def _op(ex: TcpExchange) -> Op:
    return Op.HOSTLIST if "_list_" in ex.session else Op.STATUS


@pytest.mark.parametrize("ex", refvectors.authenticated_exchanges(), ids=lambda t: t.session)
def test_client_replays_the_captured_authenticated_session(ex: TcpExchange, ref_key: Key) -> None:
    c1, r2 = ex.client()
    r1, c2, *tail = ex.daemon()
    c = ClientSession(_op(ex), auth=HashType.SHA256, key=ref_key, challenge=c1)
    assert c.data_to_send() == c1
    assert c.receive_data(r1) is None and c.data_to_send() == b""
    assert c.receive_data(c2) is None
    assert c.data_to_send() == r2  # byte for byte what the stock client answered
    answers = [c.receive_data(seg) for seg in tail]
    assert answers[-1] == _expected(ex)
    assert c.connection_closed() == _expected(ex)


@pytest.mark.parametrize(
    "ex",
    [t for t in refvectors.tcp_exchanges() if "auth-none" in t.session],
    ids=lambda t: t.session,
)
def test_client_replays_the_captured_unauthenticated_session(ex: TcpExchange) -> None:
    c = ClientSession(_op(ex), auth=HashType.NONE, key=None)
    assert c.data_to_send() == b""
    for seg in ex.daemon():
        c.receive_data(seg)
    assert c.answer == _expected(ex)
    assert c.data_to_send() == b""


def test_captured_session_under_another_key_fails(ref_key: Key) -> None:
    ex = refvectors.exchange("01_status")
    c1, _r2 = ex.client()
    r1, c2, _result = ex.daemon()
    c = ClientSession(Op.STATUS, auth=HashType.SHA256, key=OTHER, challenge=c1)
    fails("bad-answer", lambda: c.receive_data(r1 + c2))
    # The right key under the wrong hash type fails as well.
    c = ClientSession(Op.STATUS, auth=HashType.SHA512, key=ref_key, challenge=c1)
    fails("bad-answer", lambda: c.receive_data(r1))
