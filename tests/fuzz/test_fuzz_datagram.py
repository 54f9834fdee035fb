"""Fuzzing the datagram reject path: ``parse_request``, ``check_datagram``, ``verify_request``.

Properties:
- any bytes: ``parse_request`` returns a consistent ``FenceRequest`` or raises
  ``MalformedRequest``, nothing else;
- any 176 bytes, any minimum, any keys: ``check_datagram`` decides exactly what an independent
  oracle written from docs/protocol.md decides, and ``verify_request`` agrees with it;
- no change of a validly signed packet (bit flips, bytes, fields, splices) is ever accepted;
- a validly signed packet with any field at an extreme is handled without surprises.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.fuzz import corpus
from tests.fuzz.corpus import EMPTY_KEY, EXTREMES, FIELDS, KEY, OTHER_KEY, fuzz_settings
from xvmd.protocol.auth import Key, Rejected, check_datagram, verify_request
from xvmd.protocol.wire import (
    AF_INET6_WIRE,
    AF_INET_WIRE,
    REQUEST_SIZE,
    FenceRequest,
    HashType,
    MalformedRequest,
    Op,
    parse_request,
)

minimums = st.sampled_from(list(HashType))
signed_types = st.sampled_from(corpus.SIGNED_TYPES)
key_lists = st.lists(
    st.sampled_from([KEY, OTHER_KEY, EMPTY_KEY]) | st.binary(max_size=80).map(Key), max_size=3
)
domains = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
).filter(lambda s: len(s.encode()) < 64)
addresses = st.one_of(
    st.none(),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@st.composite
def valid_packets(draw: st.DrawFn, key: Key = KEY) -> bytes:
    return corpus.signed(
        draw(st.sampled_from(list(Op))),
        draw(domains),
        key=key,
        hashtype=draw(signed_types),
        address=draw(addresses),
        port=draw(st.integers(0, 0xFFFF)),
        seqno=draw(st.integers(0, 0xFFFFFFFF)),
        salt=draw(st.binary(min_size=6, max_size=6)),
    )


def check_parsed(data: bytes, req: FenceRequest) -> None:
    """Everything ``parse_request`` returned is what the bytes say (layout in wire.py)."""
    op, ht, addrlen, flags = data[0], data[1], data[2], data[3]
    port, seqno, family = (
        struct.unpack_from("<H", data, 96)[0],
        *struct.unpack_from("<II", data, 104),
    )
    assert (int(req.op), int(req.hashtype), req.addrlen, req.flags) == (op, ht, addrlen, flags)
    assert (req.port, req.seqno, req.family) == (port, seqno, family)
    assert req.random == data[98:104]
    assert req.digest == data[112:]
    assert req.raw == data
    assert "\0" not in req.domain
    if family == AF_INET_WIRE:
        assert req.address == str(ipaddress.IPv4Address(data[68:72]))
    elif family == AF_INET6_WIRE:
        assert req.address == str(ipaddress.IPv6Address(data[68:84]))
    else:
        assert family == 0 and req.address is None
    assert (req.callback is None) == (req.address is None or port == 0)


def parse_or_reject(data: bytes) -> FenceRequest | None:
    try:
        req = parse_request(data)
    except MalformedRequest as exc:
        assert exc.reason in ("size", "op", "hashtype", "family")
        if len(data) != REQUEST_SIZE:
            assert exc.reason == "size"
        return None
    assert len(data) == REQUEST_SIZE
    assert data[0] <= 6 and data[1] <= 3
    check_parsed(data, req)
    return req


def decide(data: bytes, minimum: HashType, keys: list[Key]) -> tuple[Key | None, str | None]:
    """``check_datagram`` against the oracle, and ``verify_request`` against both."""
    got = check_datagram(data, minimum, keys)
    want = corpus.oracle(data, minimum, keys)
    assert got[1] == want[1], (got, want)
    assert got[0] is want[0]
    req = parse_or_reject(data)
    if req is not None:
        try:
            verified = verify_request(req, minimum, keys)
        except Rejected as exc:
            assert exc.reason == got[1]
        else:
            assert got[1] is None and verified is got[0]
    return got


# -- arbitrary input ---------------------------------------------------------------------------


@fuzz_settings(600)
@given(st.binary(max_size=600))
def test_parse_request_accepts_or_rejects_any_bytes(data: bytes) -> None:
    parse_or_reject(data)


@fuzz_settings(600)
@given(
    st.binary(min_size=REQUEST_SIZE, max_size=REQUEST_SIZE) | valid_packets(),
    minimums,
    key_lists,
)
def test_reject_path_matches_the_oracle_on_any_176_bytes(
    data: bytes, minimum: HashType, keys: list[Key]
) -> None:
    decide(data, minimum, keys)


@fuzz_settings(300)
@given(
    st.sampled_from(list(Op)),
    domains,
    addresses,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    signed_types,
)
def test_signed_packets_round_trip(
    op: Op, domain: str, address: str | None, port: int, seqno: int, ht: HashType
) -> None:
    raw = corpus.signed(op, domain, hashtype=ht, address=address, port=port, seqno=seqno)
    req = parse_request(raw)
    assert (req.op, req.domain, req.port, req.seqno, req.hashtype) == (op, domain, port, seqno, ht)
    assert req.address == (None if address is None else str(ipaddress.ip_address(address)))
    assert decide(raw, ht, [OTHER_KEY, KEY]) == (KEY, None)
    assert verify_request(req, HashType.SHA1, [KEY]) is KEY


# -- mutations of valid signed packets ---------------------------------------------------------


@fuzz_settings(600)
@given(
    valid_packets(),
    st.lists(st.integers(0, REQUEST_SIZE * 8 - 1), min_size=1, max_size=8, unique=True),
    minimums,
)
def test_no_bit_flip_of_a_signed_packet_is_accepted(
    raw: bytes, bits: list[int], minimum: HashType
) -> None:
    mutated = corpus.flip_bits(raw, bits)
    _, reason = decide(mutated, minimum, [KEY])
    if mutated[1] == 0 and minimum is HashType.NONE:
        return  # turned into an unsigned request, which this configuration accepts by design
    assert reason is not None, (bits, mutated.hex())


@fuzz_settings(600)
@given(valid_packets(), st.sampled_from(list(FIELDS)), st.data(), minimums)
def test_no_field_change_of_a_signed_packet_is_accepted(
    raw: bytes, name: str, data: st.DataObject, minimum: HashType
) -> None:
    size = FIELDS[name][1]
    value = data.draw(st.sampled_from(EXTREMES[name]) | st.binary(min_size=size, max_size=size))
    mutated = corpus.set_field(raw, name, value)
    assume(mutated != raw)
    _, reason = decide(mutated, minimum, [KEY, OTHER_KEY])
    if mutated[1] == 0 and minimum is HashType.NONE:
        return
    assert reason is not None


@fuzz_settings(300)
@given(valid_packets(), valid_packets(key=OTHER_KEY), st.integers(1, REQUEST_SIZE - 1))
def test_splices_of_two_signed_packets_are_rejected(a: bytes, b: bytes, cut: int) -> None:
    spliced = a[:cut] + b[cut:]
    assume(spliced not in (a, b))
    assert decide(spliced, HashType.SHA1, [KEY])[1] is not None


@fuzz_settings(300)
@given(valid_packets(), signed_types, minimums)
def test_a_signature_under_another_hash_type_is_rejected(
    raw: bytes, claimed: HashType, minimum: HashType
) -> None:
    """The signature is good, but for a different algorithm than the packet names."""
    assume(claimed != raw[1])
    relabelled = raw[:1] + bytes([claimed]) + raw[2:]
    assert decide(relabelled, minimum, [KEY])[1] is not None


@fuzz_settings(600)
@given(valid_packets(), st.sampled_from(list(FIELDS)), st.data(), minimums)
def test_signed_packets_with_extreme_fields_are_handled(
    raw: bytes, name: str, data: st.DataObject, minimum: HashType
) -> None:
    """Each field at an extreme and the packet signed again: accepted or cleanly refused."""
    size = FIELDS[name][1]
    value = data.draw(st.sampled_from(EXTREMES[name]) | st.binary(min_size=size, max_size=size))
    packet = corpus.set_field(raw, name, value)
    if name != "hash" and packet[1] in (1, 2, 3):
        packet = corpus.resign(packet, KEY)
    key, reason = decide(packet, minimum, [KEY])
    ht = packet[1]
    if name == "hash" and packet != raw:
        assert (reason is None) == (ht == 0 and minimum is HashType.NONE)
    else:
        assert (reason is None) == (minimum <= ht <= 3)
    if reason is None and ht != 0:
        assert key is KEY


# -- the captured traffic ------------------------------------------------------------------------


def test_captured_datagrams_verify_and_their_mutations_do_not() -> None:
    datagrams = corpus.reference_datagrams()
    ref = corpus.reference_key()
    if not datagrams or ref is None:
        pytest.skip("captured reference vectors not available")
    import random

    rng = random.Random(1229)
    rejected = 0
    genuine = set(datagrams)
    for raw in datagrams:
        req = parse_request(raw)
        minimum = min(req.hashtype, HashType.SHA256)
        assert decide(raw, minimum, [ref])[1] is None
        for _ in range(corpus.examples(300)):
            mutated = corpus.mutate(rng, raw, datagrams)
            if mutated in genuine:
                continue  # e.g. a splice that rebuilt another captured packet
            if len(mutated) != REQUEST_SIZE:
                parse_or_reject(mutated)
                continue
            reason = decide(mutated, HashType.SHA1, [ref, KEY])[1]
            assert reason is not None, mutated.hex()
            rejected += 1
    assert rejected > 1000
