"""The 176-byte request and the hostlist stream, checked against genuine captured traffic."""

from __future__ import annotations

import struct

import pytest

from tests.unit import refvectors
from tests.unit.refvectors import TEST_DOMAIN, TEST_UUID, UdpVector
from xvmd.protocol.wire import (
    HASH_OFFSET,
    HOST_RECORD_SIZE,
    HOSTLIST_TERMINATOR,
    REQUEST_SIZE,
    FenceRequest,
    HashType,
    HostRecord,
    MalformedRequest,
    Op,
    Result,
    decode_host_record,
    encode_hostlist,
    encode_request,
    parse_request,
)

UDP_VECTORS = refvectors.udp_vectors()
# Bytes of a host_state_t the reference daemon leaves uninitialised (stack garbage).
GARBAGE_OFFSETS = (63, 127, 129)


def _vector(prefix: str) -> UdpVector:
    for v in UDP_VECTORS:
        if v.file.startswith(prefix):
            return v
    pytest.skip(refvectors.SKIP_REASON)


def _hostlist_stream(prefix: str) -> bytes:
    """Everything the daemon sent after the challenge-response (R1 and C2 are 64 bytes each)."""
    if not refvectors.AVAILABLE:
        pytest.skip(refvectors.SKIP_REASON)
    ex = refvectors.exchange(prefix)
    daemon = ex.daemon()
    if "auth-sha256" in ex.session:
        assert [len(s) for s in daemon[:2]] == [64, 64]
        daemon = daemon[2:]
    return b"".join(daemon)


def _split_hostlist(stream: bytes) -> tuple[list[bytes], bytes]:
    """(records including the terminator, the final byte) of a stream that starts with 0xFD."""
    assert stream[0] == Result.HOSTLIST
    body = stream[1:]
    records = []
    pos = 0
    while True:
        chunk = body[pos : pos + HOST_RECORD_SIZE]
        assert len(chunk) == HOST_RECORD_SIZE, "stream ended before the terminator"
        records.append(chunk)
        pos += HOST_RECORD_SIZE
        if decode_host_record(chunk) is None:
            break
    return records, body[pos:]


def _base_request() -> bytes:
    return encode_request(
        Op.STATUS,
        "test",
        address="127.0.0.1",
        port=1229,
        seqno=872439,
        hashtype=HashType.SHA256,
        random=bytes.fromhex("f249d4e0c777"),
    )


# -- parsing the captured datagrams --------------------------------------------------------------


def test_vectors_present() -> None:
    if not refvectors.AVAILABLE:
        pytest.skip(refvectors.SKIP_REASON)
    assert len(UDP_VECTORS) == 12
    assert all(len(v.raw) == REQUEST_SIZE for v in UDP_VECTORS)


@pytest.mark.parametrize("vec", UDP_VECTORS, ids=lambda v: v.id)
def test_parse_captured_request(vec: UdpVector) -> None:
    f = vec.fields
    req = parse_request(vec.raw)
    assert isinstance(req, FenceRequest)
    assert req.op == Op(f["request"])
    assert req.op.name.lower() == f["op"]
    assert req.hashtype == HashType(f["hashtype"])
    assert req.hashtype.label == f["hash"]
    assert req.addrlen == f["addrlen"] == 4
    assert req.flags == f["flags"]
    assert req.domain == f["domain"]
    assert req.address == f["address"] == "127.0.0.1"
    assert req.port == f["port_le"]
    assert req.random.hex() == f["random"]
    assert req.seqno == f["seqno_le"]
    assert req.family == f["family"] == 2
    assert req.callback == (f["address"], f["port_le"])
    assert req.digest == vec.raw[HASH_OFFSET:]
    assert req.raw == vec.raw


@pytest.mark.parametrize("vec", UDP_VECTORS, ids=lambda v: v.id)
def test_integers_are_little_endian(vec: UdpVector) -> None:
    req = parse_request(vec.raw)
    assert vec.raw[96:98] == req.port.to_bytes(2, "little")
    assert vec.raw[104:108] == req.seqno.to_bytes(4, "little")
    assert vec.raw[108:112] == req.family.to_bytes(4, "little")
    # 1229 -> cd 04, 1230 -> ce 04 on the wire (README of the vectors)
    assert vec.raw[96:98] in (bytes.fromhex("cd04"), bytes.fromhex("ce04"))


def test_unsigned_vectors_have_zero_random_and_hash() -> None:
    unsigned = [v for v in UDP_VECTORS if v.fields["hashtype"] == 0]
    if not unsigned:
        pytest.skip(refvectors.SKIP_REASON)
    for vec in unsigned:
        req = parse_request(vec.raw)
        assert req.random == b"\0" * 6
        assert req.digest == b"\0" * 64


# -- malformed requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 175, 177, 352, 1000])
def test_wrong_size_is_malformed(size: int) -> None:
    data = (_base_request() * 6)[:size]
    with pytest.raises(MalformedRequest) as info:
        parse_request(data)
    assert info.value.reason == "size"
    assert str(size) in str(info.value)


@pytest.mark.parametrize("code", [7, 8, 9, 0x7F, 0xFD, 0xFF])
def test_unknown_op(code: int) -> None:
    data = bytearray(_base_request())
    data[0] = code
    with pytest.raises(MalformedRequest) as info:
        parse_request(bytes(data))
    assert info.value.reason == "op"


@pytest.mark.parametrize("code", [4, 5, 0x10, 0xFF])
def test_unknown_hashtype(code: int) -> None:
    data = bytearray(_base_request())
    data[1] = code
    with pytest.raises(MalformedRequest) as info:
        parse_request(bytes(data))
    assert info.value.reason == "hashtype"


@pytest.mark.parametrize("family", [1, 3, 11, 0x02000000, 0xFFFFFFFF])
def test_unknown_family(family: int) -> None:
    data = bytearray(_base_request())
    struct.pack_into("<I", data, 108, family)
    with pytest.raises(MalformedRequest) as info:
        parse_request(bytes(data))
    assert info.value.reason == "family"


def test_family_zero_has_no_callback() -> None:
    """TCP-listener requests carry family 0, address and port zero: no callback."""
    req = parse_request(encode_request(Op.STATUS, "vm1", seqno=5))
    assert req.family == 0
    assert req.address is None
    assert req.callback is None


def test_port_zero_has_no_callback() -> None:
    req = parse_request(encode_request(Op.STATUS, "vm1", address="10.0.0.1", port=0))
    assert req.address == "10.0.0.1"
    assert req.callback is None


def test_all_known_ops_parse() -> None:
    for op in Op:
        assert parse_request(encode_request(op, "x")).op is op


# -- encode_request ----------------------------------------------------------------------------


def test_encode_request_round_trip_ipv4() -> None:
    raw = encode_request(
        Op.REBOOT,
        "guest.example.com",
        address="192.0.2.7",
        port=11229,
        seqno=999999,
        hashtype=HashType.SHA512,
        random=b"\x01\x02\x03\x04\x05\x06",
        flags=1,
    )
    assert len(raw) == REQUEST_SIZE
    req = parse_request(raw)
    assert req.op is Op.REBOOT
    assert req.hashtype is HashType.SHA512
    assert req.domain == "guest.example.com"
    assert req.address == "192.0.2.7"
    assert req.addrlen == 4
    assert req.port == 11229
    assert raw[96:98] == bytes.fromhex("dd2b")
    assert req.seqno == 999999
    assert req.family == 2
    assert req.flags == 1
    assert req.random == b"\x01\x02\x03\x04\x05\x06"
    assert req.digest == b"\0" * 64


def test_encode_request_round_trip_ipv6() -> None:
    req = parse_request(encode_request(Op.STATUS, "vm6", address="fd00::1", port=1229, seqno=7))
    assert req.address == "fd00::1"
    assert req.addrlen == 16
    assert req.family == 10
    assert req.raw[68:84] == bytes.fromhex("fd000000000000000000000000000001")
    assert req.raw[84:96] == b"\0" * 12
    assert req.callback == ("fd00::1", 1229)


def test_encode_request_utf8_domain() -> None:
    req = parse_request(encode_request(Op.OFF, "vm-ä"))
    assert req.domain == "vm-ä"


def test_encode_request_reproduces_captured_unsigned_packet() -> None:
    vec = _vector("07_status")
    f = vec.fields
    raw = encode_request(
        Op(f["request"]),
        f["domain"],
        address=f["address"],
        port=f["port_le"],
        seqno=f["seqno_le"],
    )
    assert raw == vec.raw


def test_encode_request_reproduces_captured_head_of_signed_packet() -> None:
    vec = _vector("01_status")
    f = vec.fields
    raw = encode_request(
        Op(f["request"]),
        f["domain"],
        address=f["address"],
        port=f["port_le"],
        seqno=f["seqno_le"],
        hashtype=HashType(f["hashtype"]),
        random=bytes.fromhex(f["random"]),
    )
    assert raw[:HASH_OFFSET] == vec.raw[:HASH_OFFSET]
    assert raw[HASH_OFFSET:] == b"\0" * 64


def test_encode_request_limits() -> None:
    assert parse_request(encode_request(Op.OFF, "x" * 63)).domain == "x" * 63
    with pytest.raises(ValueError):
        encode_request(Op.OFF, "x" * 64)
    with pytest.raises(ValueError):
        encode_request(Op.OFF, "vm", random=b"\0" * 5)


def test_undecodable_domain_stays_visible() -> None:
    data = bytearray(encode_request(Op.OFF, "vm"))
    data[4:8] = b"a\xffb\0"
    assert parse_request(bytes(data)).domain == "a\\xffb"


# -- host records and the hostlist stream --------------------------------------------------------


def test_host_record_is_zero_filled() -> None:
    rec = HostRecord(TEST_DOMAIN, TEST_UUID, 1).encode()
    assert len(rec) == HOST_RECORD_SIZE
    for off in GARBAGE_OFFSETS:
        assert rec[off] == 0, off
    assert rec[:4] == b"test"
    assert rec[4:64] == b"\0" * 60
    assert rec[64:100] == TEST_UUID.encode()
    assert rec[100:128] == b"\0" * 28
    assert rec[128] == 1


def test_host_record_long_name_keeps_terminating_nul() -> None:
    rec = HostRecord("n" * 80, "u" * 80, 5).encode()
    assert rec[:63] == b"n" * 63
    assert rec[64:127] == b"u" * 63
    assert rec[63] == rec[127] == rec[129] == 0
    assert decode_host_record(rec) == HostRecord("n" * 63, "u" * 63, 5)


def test_host_record_round_trip() -> None:
    for state in range(8):
        rec = HostRecord("vm-01", "00000001-0000-4000-8000-5eed00000001", state)
        assert decode_host_record(rec.encode()) == rec


def test_decode_host_record_size_checked() -> None:
    with pytest.raises(ValueError):
        decode_host_record(b"\0" * 129)
    with pytest.raises(ValueError):
        decode_host_record(b"\0" * 131)


def test_terminator_decodes_to_none() -> None:
    assert HOSTLIST_TERMINATOR == b"\0" * HOST_RECORD_SIZE
    assert decode_host_record(HOSTLIST_TERMINATOR) is None


def test_encode_hostlist_layout_and_case_insensitive_order() -> None:
    names = ["beta", "Alpha", "gamma", "alpha2", "Zeta", "DELTA"]
    records = [HostRecord(n, f"uuid-{n}", 1) for n in names]
    stream = encode_hostlist(records)
    assert stream[0] == 0xFD
    assert len(stream) == 1 + HOST_RECORD_SIZE * (len(names) + 1) + 1
    chunks, final = _split_hostlist(stream)
    assert chunks[-1] == b"\0" * HOST_RECORD_SIZE
    assert final == b"\x00"
    decoded = [decode_host_record(c) for c in chunks[:-1]]
    assert [d.name for d in decoded if d] == ["Alpha", "alpha2", "beta", "DELTA", "gamma", "Zeta"]
    assert [d.uuid for d in decoded if d] == [
        "uuid-Alpha",
        "uuid-alpha2",
        "uuid-beta",
        "uuid-DELTA",
        "uuid-gamma",
        "uuid-Zeta",
    ]


def test_encode_hostlist_empty_and_final_byte() -> None:
    assert encode_hostlist([]) == b"\xfd" + b"\0" * HOST_RECORD_SIZE + b"\x00"
    assert encode_hostlist([], Result.FAIL)[-1] == 1


def test_encode_hostlist_is_independent_of_input_order() -> None:
    records = [HostRecord(n, n, 1) for n in ("c", "B", "a", "D")]
    assert encode_hostlist(records) == encode_hostlist(list(reversed(records)))


@pytest.mark.parametrize("prefix", ["05_list", "10_list"])
def test_decode_captured_hostlist_stream(prefix: str) -> None:
    stream = _hostlist_stream(prefix)
    assert len(stream) == 1 + 130 + 130 + 1
    chunks, final = _split_hostlist(stream)
    assert len(chunks) == 2
    assert decode_host_record(chunks[0]) == HostRecord(TEST_DOMAIN, TEST_UUID, 1)
    assert chunks[1] == b"\0" * HOST_RECORD_SIZE
    assert final == b"\x00"


@pytest.mark.parametrize("prefix", ["05_list", "10_list"])
def test_our_hostlist_matches_capture_except_garbage_bytes(prefix: str) -> None:
    captured = _hostlist_stream(prefix)
    ours = encode_hostlist([HostRecord(TEST_DOMAIN, TEST_UUID, 1)])
    assert len(ours) == len(captured)
    assert ours[0] == captured[0] == 0xFD
    ours_rec, theirs_rec = ours[1:131], captured[1:131]
    differing = {i for i in range(HOST_RECORD_SIZE) if ours_rec[i] != theirs_rec[i]}
    # Only the uninitialised bytes may differ, and the capture does show garbage there.
    assert differing <= set(GARBAGE_OFFSETS)
    assert differing, "the capture was expected to carry stack garbage in the record"
    assert all(ours_rec[i] == 0 for i in GARBAGE_OFFSETS)
    # Terminator and final byte are byte-identical.
    assert ours[131:] == captured[131:]


def test_captured_garbage_is_where_the_readme_says() -> None:
    rec = _hostlist_stream("05_list")[1:131]
    assert (rec[63], rec[127], rec[129]) == (0x33, 0x37, 0x8F)
