"""The host messages' bytes: every kind survives a round trip, and whatever else a peer sends
is a BadMessage that says why, never an exception of another kind."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvmd.backend import DomainState
from xvmd.hosts.codec import decode, encode
from xvmd.hosts.messages import (
    MAX_DOMAINS,
    MAX_MESSAGE,
    VERSION,
    BadMessage,
    Claim,
    Departed,
    DeviceTag,
    DomainRecord,
    Forward,
    Inventory,
    Message,
    Outcome,
    Seen,
    Sweep,
    Swept,
)
from xvmd.protocol.wire import Op

UUID = "6f1c2a1e-0b7d-4c55-9a39-1f0e6d2b8c41"
SAMPLES: list[Message] = [
    Inventory(
        3,
        "hv-3",
        17,
        (DeviceTag("xvm-hv3", "0123456789abcdef"),),
        (
            DomainRecord("guest-a", UUID, DomainState.RUNNING),
            DomainRecord("é", UUID, DomainState.SHUTOFF),
        ),
        (Departed("guest-b", UUID, 2),),
    ),
    Inventory(1, "", 0, (), ()),
    Claim(2, "0123456789abcdef", bytes(range(176)), "guest-a", uuid_only=True),
    Forward(9, 2, 3, Op.REBOOT, "guest-a", False, 25_000),
    Outcome(9, 2, 3, 1, "still running after destroy"),
    Sweep(4, 1, "guest-a", False),
    Swept(4, 1, 3, Seen.UNKNOWN, "hypervisor error: connection reset"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    assert decode(encode(msg)) == msg


def _body(**fields: object) -> bytes:
    return json.dumps({"v": VERSION, **fields}).encode()


FORWARD = {
    "kind": "forward",
    "ident": 1,
    "origin": 1,
    "to": 2,
    "op": 1,
    "domain": "x",
    "uuid_only": False,
    "budget_ms": 1000,
}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"v": 2, "kind": "claim"}).encode(), "version 2"),
        (_body(kind="gossip"), "unknown kind 'gossip'"),
        (_body(**{**FORWARD, "op": 7}), "op is not an integer from 0 to 6"),
        (_body(**{**FORWARD, "to": -1}), "to is not an integer"),
        (_body(**{**FORWARD, "to": True}), "to is not an integer"),
        (_body(**{**FORWARD, "uuid_only": 0}), "uuid_only is not true or false"),
        (_body(**{k: v for k, v in FORWARD.items() if k != "domain"}), "forward: no domain"),
        (_body(**{**FORWARD, "domain": "x" * 1025}), "domain is not a string of at most 1024"),
        (
            _body(
                kind="inventory",
                node=1,
                name="h",
                serial=1,
                devices=[["d", "KEY MATERIAL!!!!"]],
                domains=[],
                departed=[],
            ),
            "fingerprint is not 16 hex digits",
        ),
        (
            _body(
                kind="inventory",
                node=1,
                name="h",
                serial=1,
                devices=[],
                domains=[["vm", "not-a-uuid", 1]],
                departed=[],
            ),
            "is not a lower-case UUID",
        ),
        (
            _body(
                kind="inventory",
                node=1,
                name="h",
                serial=1,
                devices=[],
                domains=[["vm", UUID, 1]] * (MAX_DOMAINS + 1),
                departed=[],
            ),
            f"domains is not a list of at most {MAX_DOMAINS}",
        ),
        (
            _body(
                kind="claim",
                origin=1,
                fingerprint="0123456789abcdef",
                request="AAAA",
                domain="",
                uuid_only=False,
            ),
            "request is 3 bytes, not 176",
        ),
        (b" " * (MAX_MESSAGE + 1), f"more than {MAX_MESSAGE}"),
        (
            _body(kind="swept", ident=1, origin=1, node=2, seen="probably", detail=""),
            "seen 'probably' is unknown",
        ),
        (_body(kind="sweep", ident=1, origin=1, domain="x"), "sweep: no uuid_only"),
    ],
)
def test_what_cannot_be_used_is_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(BadMessage, match=why.replace("(", r"\(")):
        decode(data)


def test_an_inventory_too_large_to_send_is_refused_at_the_sender() -> None:
    domains = tuple(DomainRecord("x" * 1000, UUID, DomainState.RUNNING) for _ in range(MAX_DOMAINS))
    with pytest.raises(ValueError, match="exceeds"):
        encode(Inventory(1, "h", 1, (), domains))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_are_a_bad_message_or_a_message(data: bytes) -> None:
    with contextlib.suppress(BadMessage):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    ),
    st.sampled_from(["inventory", "claim", "forward", "outcome", "sweep", "swept"]),
)
def test_arbitrary_json_of_every_kind_is_a_bad_message_or_a_message(
    value: object, kind: str
) -> None:
    fields = value if isinstance(value, dict) else {"x": value}
    with contextlib.suppress(BadMessage):
        decode(_body(**{**fields, "kind": kind}))
