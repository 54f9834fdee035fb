"""Request signatures and challenge answers, checked against the genuine captured traffic."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.support import lengthext
from tests.unit import refvectors
from tests.unit.refvectors import TcpExchange, UdpVector
from xvmd.protocol.auth import Key, Rejected, check_datagram, sign_request, verify_request
from xvmd.protocol.wire import (
    HASH_OFFSET,
    HASH_SIZE,
    REQUEST_SIZE,
    FenceRequest,
    HashType,
    MalformedRequest,
    Op,
    encode_request,
    parse_request,
)

UDP_VECTORS = refvectors.udp_vectors()
SIGNED = [v for v in UDP_VECTORS if v.fields["hashtype"] != 0]
UNSIGNED = [v for v in UDP_VECTORS if v.fields["hashtype"] == 0]
SHA1_NEGATIVE = [v for v in UDP_VECTORS if v.file.startswith("11_")]
STRONG = [v for v in SIGNED if v.fields["hashtype"] >= HashType.SHA256]
AUTH_EXCHANGES = refvectors.authenticated_exchanges()

DIGEST_LEN = {HashType.SHA1: 20, HashType.SHA256: 32, HashType.SHA512: 64}


def _vector(prefix: str) -> UdpVector:
    for v in UDP_VECTORS:
        if v.file.startswith(prefix):
            return v
    pytest.skip(refvectors.SKIP_REASON)


def _rejected(raw: bytes, minimum: HashType, keys: list[Key]) -> str:
    """The reason ``raw`` is refused: a MalformedRequest or Rejected tag (fails if accepted)."""
    try:
        req = parse_request(raw)
    except MalformedRequest as exc:
        return f"malformed:{exc.reason}"
    try:
        verify_request(req, minimum, keys)
    except Rejected as exc:
        return exc.reason
    pytest.fail("tampered request was accepted")


def test_vector_sets_present() -> None:
    if not refvectors.AVAILABLE:
        pytest.skip(refvectors.SKIP_REASON)
    assert len(SIGNED) == 8
    assert len(UNSIGNED) == 4
    assert len(SHA1_NEGATIVE) == 2
    assert len(AUTH_EXCHANGES) == 6


# -- captured requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("vec", STRONG, ids=lambda v: v.id)
def test_captured_signed_request_verifies(vec: UdpVector, ref_key: Key) -> None:
    req = parse_request(vec.raw)
    assert verify_request(req, HashType.SHA256, [ref_key]) is ref_key


def test_sha512_vector_accepted_under_sha256_and_sha512_minimum(ref_key: Key) -> None:
    req = parse_request(_vector("06_status").raw)
    assert req.hashtype is HashType.SHA512
    assert verify_request(req, HashType.SHA256, [ref_key]) is ref_key
    assert verify_request(req, HashType.SHA512, [ref_key]) is ref_key


def test_sha256_vector_too_weak_for_sha512_minimum(ref_key: Key) -> None:
    req = parse_request(_vector("01_status").raw)
    with pytest.raises(Rejected) as info:
        verify_request(req, HashType.SHA512, [ref_key])
    assert info.value.reason == "weak-hash"


@pytest.mark.parametrize("vec", UNSIGNED, ids=lambda v: v.id)
def test_unsigned_vector_only_with_minimum_none(vec: UdpVector, ref_key: Key) -> None:
    req = parse_request(vec.raw)
    assert verify_request(req, HashType.NONE, []) is None
    # An unsigned request proves no key, whatever is loaded: the service picks the key that
    # may answer its challenge, and the scope that goes with it (xvmd/core/intake.py).
    assert verify_request(req, HashType.NONE, [ref_key]) is None
    for minimum in (HashType.SHA1, HashType.SHA256, HashType.SHA512):
        with pytest.raises(Rejected) as info:
            verify_request(req, minimum, [ref_key])
        assert info.value.reason == "weak-hash"


@pytest.mark.parametrize("vec", SHA1_NEGATIVE, ids=lambda v: v.id)
def test_sha1_vector_weak_under_sha256_accepted_under_sha1(vec: UdpVector, ref_key: Key) -> None:
    req = parse_request(vec.raw)
    assert req.hashtype is HashType.SHA1
    with pytest.raises(Rejected) as info:
        verify_request(req, HashType.SHA256, [ref_key])
    assert info.value.reason == "weak-hash"
    assert verify_request(req, HashType.SHA1, [ref_key]) is ref_key
    assert verify_request(req, HashType.NONE, [ref_key]) is ref_key


def test_sha1_retransmits_share_seqno_but_not_hash() -> None:
    if len(SHA1_NEGATIVE) != 2:
        pytest.skip(refvectors.SKIP_REASON)
    a, b = (parse_request(v.raw) for v in SHA1_NEGATIVE)
    assert a.seqno == b.seqno
    assert a.random != b.random
    assert a.digest != b.digest


@pytest.mark.parametrize("vec", SIGNED, ids=lambda v: v.id)
def test_sign_request_reproduces_captured_signature(vec: UdpVector, ref_key: Key) -> None:
    unsigned = vec.raw[:HASH_OFFSET] + b"\0" * 64
    signed = sign_request(unsigned, HashType(vec.fields["hashtype"]), ref_key)
    assert signed == vec.raw


@pytest.mark.parametrize("vec", SIGNED, ids=lambda v: v.id)
def test_captured_digest_is_plain_hash(vec: UdpVector, ref_key_bytes: bytes) -> None:
    """Independent of xvmd: H(key || packet-with-zero-hash), zero-padded (not an HMAC)."""
    ht = HashType(vec.fields["hashtype"])
    message = vec.raw[:HASH_OFFSET] + b"\0" * 64
    digest = hashlib.new(ht.label, ref_key_bytes + message).digest()
    assert vec.raw[HASH_OFFSET:] == digest + b"\0" * (64 - len(digest))
    assert Key(ref_key_bytes).digest(ht, message) == vec.raw[HASH_OFFSET:]


# -- tampering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["01_status", "06_status"])
def test_every_single_bit_flip_is_rejected(prefix: str, ref_key: Key) -> None:
    raw = _vector(prefix).raw
    header_fields = {0, 1, 108, 109, 110, 111}  # op, hashtype, family: may fail to parse first
    wrong = []
    for pos in range(REQUEST_SIZE):
        for bit in range(8):
            data = bytearray(raw)
            data[pos] ^= 1 << bit
            reason = _rejected(bytes(data), HashType.SHA256, [ref_key])
            if pos in header_fields:
                ok = reason == "bad-signature" or reason.startswith("malformed:")
                if pos == 1:
                    ok = ok or reason == "weak-hash"
            else:
                ok = reason == "bad-signature"
            if not ok:
                wrong.append((pos, bit, reason))
    assert wrong == []


def test_flip_in_hash_padding_is_bad_signature(ref_key: Key) -> None:
    raw = _vector("01_status").raw
    for pos in range(HASH_OFFSET + 32, REQUEST_SIZE):  # sha256: the last 32 bytes are padding
        data = bytearray(raw)
        data[pos] = 0x01
        with pytest.raises(Rejected) as info:
            verify_request(parse_request(bytes(data)), HashType.SHA256, [ref_key])
        assert info.value.reason == "bad-signature", pos


def test_sha1_padding_must_be_zero(ref_key: Key) -> None:
    raw = _vector("11_status").raw
    assert verify_request(parse_request(raw), HashType.SHA1, [ref_key]) is ref_key
    for pos in (HASH_OFFSET + 20, HASH_OFFSET + 40, REQUEST_SIZE - 1):
        data = bytearray(raw)
        data[pos] = 0xFF
        with pytest.raises(Rejected) as info:
            verify_request(parse_request(bytes(data)), HashType.SHA1, [ref_key])
        assert info.value.reason == "bad-signature"


def test_signature_does_not_transfer_to_other_hashtype(ref_key: Key) -> None:
    """Relabelling a sha256-signed packet as sha512 must not verify."""
    data = bytearray(_vector("01_status").raw)
    data[1] = HashType.SHA512
    with pytest.raises(Rejected) as info:
        verify_request(parse_request(bytes(data)), HashType.SHA256, [ref_key])
    assert info.value.reason == "bad-signature"


# -- keys ----------------------------------------------------------------------------------------


def test_wrong_key_rejected(ref_key_bytes: bytes) -> None:
    req = parse_request(_vector("01_status").raw)
    wrong = Key(ref_key_bytes[:-1] + bytes([ref_key_bytes[-1] ^ 1]))
    with pytest.raises(Rejected) as info:
        verify_request(req, HashType.SHA256, [wrong])
    assert info.value.reason == "bad-signature"


def test_second_key_does_not_prevent_verification(ref_key: Key) -> None:
    req = parse_request(_vector("01_status").raw)
    other = Key(b"some other cluster's key\n")
    assert verify_request(req, HashType.SHA256, [other, ref_key]) is ref_key
    assert verify_request(req, HashType.SHA256, [ref_key, other]) is ref_key
    assert verify_request(req, HashType.SHA256, [Key(b""), other, ref_key]) is ref_key


def test_verify_returns_the_matching_key() -> None:
    k1, k2 = Key(b"key-one"), Key(b"key-two")
    for key in (k1, k2):
        raw = sign_request(
            encode_request(Op.OFF, "vm", address="10.0.0.1", port=1229), HashType.SHA256, key
        )
        assert verify_request(parse_request(raw), HashType.SHA256, [k1, k2]) is key


@pytest.mark.parametrize(
    "keys", [[], [Key(b"")], [Key(b""), Key(b"")]], ids=["none", "empty", "two-empty"]
)
def test_no_usable_key(keys: list[Key]) -> None:
    req = _signed(HashType.SHA256)
    with pytest.raises(Rejected) as info:
        verify_request(req, HashType.SHA256, keys)
    assert info.value.reason == "no-key"


def _signed(ht: HashType, key: Key | None = None) -> FenceRequest:
    raw = encode_request(
        Op.REBOOT, "vm-07", address="192.0.2.1", port=1229, seqno=4242, random=b"abcdef"
    )
    return parse_request(sign_request(raw, ht, key or Key(b"k")))


@pytest.mark.parametrize("ht", list(HashType), ids=lambda h: h.label)
def test_sign_request_round_trip(ht: HashType) -> None:
    key = Key(b"round-trip key\n")
    req = _signed(ht, key)
    assert req.hashtype is ht
    assert req.op is Op.REBOOT and req.domain == "vm-07" and req.seqno == 4242
    if ht is HashType.NONE:
        assert req.digest == b"\0" * 64
        assert verify_request(req, HashType.NONE, [key]) is None  # unsigned: no key proven
        assert verify_request(req, HashType.NONE, []) is None
        return
    n = DIGEST_LEN[ht]
    assert any(req.digest[:n])
    assert req.digest[n:] == b"\0" * (64 - n)
    assert verify_request(req, ht, [key]) is key
    assert verify_request(req, HashType.SHA1, [key]) is key
    with pytest.raises(Rejected):
        verify_request(req, ht, [Key(b"round-trip key")])  # without the newline: another key


def test_sign_request_rejects_wrong_size() -> None:
    with pytest.raises(ValueError):
        sign_request(b"\0" * 175, HashType.SHA256, Key(b"k"))


# -- challenge-response --------------------------------------------------------------------------


@pytest.mark.parametrize("ex", AUTH_EXCHANGES, ids=lambda t: t.session)
def test_captured_challenge_responses(ex: TcpExchange, ref_key: Key) -> None:
    client, daemon = ex.client(), ex.daemon()
    c1, r2 = client[0], client[1]
    r1, c2 = daemon[0], daemon[1]
    assert len(c1) == len(r1) == len(c2) == len(r2) == 64
    assert ref_key.digest(HashType.SHA256, c1) == r1  # daemon answered the client
    assert ref_key.digest(HashType.SHA256, c2) == r2  # client answered the daemon
    assert r1[32:] == r2[32:] == b"\0" * 32
    assert ref_key.matches(HashType.SHA256, c1, r1)
    assert ref_key.matches(HashType.SHA256, c2, r2)
    assert not ref_key.matches(HashType.SHA256, c2, r1)
    assert ref_key.digest(HashType.SHA512, c1) != r1


def test_key_digest_and_matches() -> None:
    key = Key(b"abc")
    assert key.digest(HashType.NONE, b"x") == b"\0" * 64
    assert key.matches(HashType.NONE, b"x", b"anything")
    expected = hashlib.sha1(b"abcmsg").digest() + b"\0" * 44
    assert key.digest(HashType.SHA1, b"msg") == expected
    assert key.matches(HashType.SHA1, b"msg", expected)
    assert not key.matches(HashType.SHA1, b"msg", expected[:20])  # padding is compared too
    assert not key.matches(HashType.SHA1, b"msg", expected[:-1] + b"\x01")
    # the pre-keyed contexts are copied, not consumed
    assert key.digest(HashType.SHA256, b"m") == key.digest(HashType.SHA256, b"m")


def test_key_repr_hides_key_material(ref_key_bytes: bytes) -> None:
    key = Key(ref_key_bytes)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert str(len(ref_key_bytes)) in text
        assert ref_key_bytes[:6].hex() not in text
        assert repr(ref_key_bytes[:6])[2:-1] not in text
    secret = Key(b"hunter2-secret")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)


# -- reflection tags and length extension ----------------------------------------------------------


def test_a_tagged_challenge_is_recognised_only_under_its_key() -> None:
    key = Key(os.urandom(64))
    c2 = key.tagged_challenge(os.urandom(32))
    assert len(c2) == 64 and key.is_tagged(c2)
    assert Key(key.data).is_tagged(c2)  # another daemon holding the same key
    assert not Key(os.urandom(64)).is_tagged(c2)
    assert not key.is_tagged(c2[:32] + bytes(32))
    assert not any(key.is_tagged(os.urandom(64)) for _ in range(1000))  # a client's random C1
    with pytest.raises(ValueError):
        key.tagged_challenge(bytes(31))


@pytest.mark.parametrize("key_len", [24, 29, 45, 55, 88, 109])
def test_a_signature_made_by_length_extension_is_refused_as_forged(key_len: int) -> None:
    """From the daemon's answer to one 64-byte challenge, a request of the attacker's choice
    gets a signature that really is H(key || request); only its shape gives it away."""
    key = Key(os.urandom(key_len))
    prefix = bytes([int(Op.OFF), int(HashType.SHA256), 0, 0]) + b"vm-01".ljust(60, b"\0")
    answer = key.digest(HashType.SHA256, prefix)  # what a session sends back for C1 = prefix
    forged = lengthext.forge(prefix, answer, key_len, seqno=4242)
    message = forged[:HASH_OFFSET] + bytes(HASH_SIZE)
    assert forged[HASH_OFFSET : HASH_OFFSET + 32] == hashlib.sha256(key.data + message).digest()
    assert check_datagram(forged, int(HashType.SHA256), [key]) == (None, "forged")
    with pytest.raises(Rejected) as info:
        verify_request(parse_request(forged), HashType.SHA256, [key])
    assert info.value.reason == "forged"


@pytest.mark.parametrize("key_len", [1, 20, 45, 64, 4096])
@pytest.mark.parametrize("ht", [HashType.SHA1, HashType.SHA256, HashType.SHA512], ids=str)
def test_honest_requests_never_look_extended(key_len: int, ht: HashType) -> None:
    key = Key(os.urandom(key_len))
    for i in range(200):
        raw = encode_request(
            Op(i % 4),
            f"vm-{i:02d}" * (i % 9),
            address="192.0.2.7",
            port=1229,
            seqno=i,
            hashtype=ht,
            random=os.urandom(6),
        )
        assert check_datagram(sign_request(raw, ht, key), int(ht), [key]) == (key, None)
