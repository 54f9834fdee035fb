"""Messages between the hosts as bytes, and back (pure): the rules are in
``xvmd.hosts.messages``; every problem with a peer's bytes is a ``BadMessage`` naming it."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from xvmd.backend import DomainState
from xvmd.hosts.messages import (
    MAX_DEVICES,
    MAX_DOMAINS,
    MAX_MESSAGE,
    MAX_NODEID,
    MAX_TEXT,
    VERSION,
    BadMessage,
    Claim,
    Departed,
    DeviceTag,
    DomainRecord,
    Done,
    Forward,
    Inventory,
    Message,
    Outcome,
    Proof,
    ProofKind,
    ProofRecord,
    Seen,
    Sweep,
    Swept,
)
from xvmd.protocol.wire import REQUEST_SIZE, Op

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_PACKET = re.compile(r"[0-9a-f]{32}")  # replay.fingerprint of a request, hex


def encode(msg: Message) -> bytes:
    if isinstance(msg, Inventory):
        body: dict[str, Any] = {
            "kind": "inventory",
            "node": msg.node,
            "name": msg.name,
            "serial": msg.serial,
            "devices": [[d.device, d.fingerprint] for d in msg.devices],
            "domains": [[d.name, d.uuid, int(d.state)] for d in msg.domains],
            "departed": [[d.name, d.uuid, d.node] for d in msg.departed],
            "proven": [_proof_row(p) for p in msg.proven],
        }
    elif isinstance(msg, Claim):
        body = {
            "kind": "claim",
            "origin": msg.origin,
            "fingerprint": msg.fingerprint,
            "request": base64.b64encode(msg.request).decode(),
            "domain": msg.domain,
            "uuid_only": msg.uuid_only,
        }
    elif isinstance(msg, Forward):
        body = {
            "kind": "forward",
            "ident": msg.ident,
            "origin": msg.origin,
            "to": msg.to,
            "op": int(msg.op),
            "domain": msg.domain,
            "uuid_only": msg.uuid_only,
            "budget_ms": msg.budget_ms,
        }
    elif isinstance(msg, Done):
        body = {"kind": "done", "node": msg.node, "request": msg.request}
    elif isinstance(msg, Proof):
        body = {"kind": "proof", "node": msg.node, "proof": _proof_row(msg.record)}
    elif isinstance(msg, Sweep):
        body = {
            "kind": "sweep",
            "ident": msg.ident,
            "origin": msg.origin,
            "domain": msg.domain,
            "uuid_only": msg.uuid_only,
        }
    elif isinstance(msg, Swept):
        body = {
            "kind": "swept",
            "ident": msg.ident,
            "origin": msg.origin,
            "node": msg.node,
            "seen": str(msg.seen),
            "detail": msg.detail,
        }
    else:
        body = {
            "kind": "outcome",
            "ident": msg.ident,
            "origin": msg.origin,
            "node": msg.node,
            "result": msg.result,
            "detail": msg.detail,
        }
    data = json.dumps({"v": VERSION, **body}, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"{body['kind']} message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def _proof_row(p: ProofRecord) -> list[Any]:
    return [p.host, str(p.kind), p.detail]


def _proof(row: Any) -> ProofRecord:
    if not isinstance(row, list) or len(row) != 3:
        raise BadMessage("a proof is not a list of 3")
    host, kind, detail = row
    try:
        proof_kind = ProofKind(kind)
    except ValueError:
        raise BadMessage(f"proof kind {kind!r:.40} is unknown") from None
    return ProofRecord(_int(host, "host", MAX_NODEID), proof_kind, _text(detail, "detail"))


def decode(data: bytes) -> Message:
    """Raises BadMessage."""
    if len(data) > MAX_MESSAGE:
        raise BadMessage(f"{len(data)} bytes, more than {MAX_MESSAGE}")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadMessage("not a JSON object")
    if obj.get("v") != VERSION:
        raise BadMessage(f"version {obj.get('v')!r}, this host speaks {VERSION}")
    kind = obj.get("kind")
    reader = _READERS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        raise BadMessage(f"unknown kind {kind!r:.40}")
    return reader(_Fields(obj))


class _Fields:
    """Typed access to one message's fields; every problem is a BadMessage."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    def get(self, key: str) -> Any:
        if key not in self.obj:
            raise BadMessage(f"{self.obj['kind']}: no {key}")
        return self.obj[key]

    def number(self, key: str, top: int = MAX_NODEID) -> int:
        return _int(self.get(key), key, top)

    def text(self, key: str) -> str:
        return _text(self.get(key), key)

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise BadMessage(f"{key} is not true or false")
        return value

    def rows(self, key: str, width: int, limit: int) -> list[list[Any]]:
        value = self.get(key)
        if not isinstance(value, list) or len(value) > limit:
            raise BadMessage(f"{key} is not a list of at most {limit}")
        for row in value:
            if not isinstance(row, list) or len(row) != width:
                raise BadMessage(f"{key}: an entry is not a list of {width}")
        return value


def _int(value: Any, what: str, top: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise BadMessage(f"{what} is not an integer from 0 to {top}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value.encode()) > MAX_TEXT:
        raise BadMessage(f"{what} is not a string of at most {MAX_TEXT} bytes")
    return value


def _uuid(value: Any) -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise BadMessage(f"{value!r:.60} is not a lower-case UUID")
    return value


def _inventory(f: _Fields) -> Inventory:
    devices = []
    for device, fingerprint in f.rows("devices", 2, MAX_DEVICES):
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise BadMessage("a device fingerprint is not 16 hex digits")
        devices.append(DeviceTag(_text(device, "device"), fingerprint))
    domains = [
        DomainRecord(_text(name, "domain name"), _uuid(uuid), DomainState.of(_int(s, "state", 7)))
        for name, uuid, s in f.rows("domains", 3, MAX_DOMAINS)
    ]
    departed = [
        Departed(_text(name, "domain name"), _uuid(uuid), _int(node, "node", MAX_NODEID))
        for name, uuid, node in f.rows("departed", 3, MAX_DOMAINS)
    ]
    proven = [_proof(row) for row in f.rows("proven", 3, MAX_DEVICES)]
    return Inventory(
        f.number("node"),
        f.text("name"),
        f.number("serial", 2**63),
        tuple(devices),
        tuple(domains),
        tuple(departed),
        tuple(proven),
    )


def _claim(f: _Fields) -> Claim:
    fingerprint = f.text("fingerprint")
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise BadMessage("fingerprint is not 16 hex digits")
    try:
        request = base64.b64decode(f.text("request"), validate=True)
    except binascii.Error:
        raise BadMessage("request is not base64") from None
    if len(request) != REQUEST_SIZE:
        raise BadMessage(f"request is {len(request)} bytes, not {REQUEST_SIZE}")
    return Claim(f.number("origin"), fingerprint, request, f.text("domain"), f.flag("uuid_only"))


def _forward(f: _Fields) -> Forward:
    op = f.number("op", max(Op))
    return Forward(
        f.number("ident", 2**63),
        f.number("origin"),
        f.number("to"),
        Op(op),
        f.text("domain"),
        f.flag("uuid_only"),
        f.number("budget_ms", 600_000),
    )


def _outcome(f: _Fields) -> Outcome:
    return Outcome(
        f.number("ident", 2**63),
        f.number("origin"),
        f.number("node"),
        f.number("result", 255),
        f.text("detail"),
    )


def _done(f: _Fields) -> Done:
    request = f.text("request")
    if not _PACKET.fullmatch(request):
        raise BadMessage("request is not 32 hex digits")
    return Done(f.number("node"), request)


def _proof_message(f: _Fields) -> Proof:
    return Proof(f.number("node"), _proof(f.get("proof")))


def _sweep(f: _Fields) -> Sweep:
    return Sweep(
        f.number("ident", 2**63), f.number("origin"), f.text("domain"), f.flag("uuid_only")
    )


def _swept(f: _Fields) -> Swept:
    try:
        seen = Seen(f.text("seen"))
    except ValueError:
        raise BadMessage(f"seen {f.get('seen')!r:.40} is unknown") from None
    return Swept(
        f.number("ident", 2**63), f.number("origin"), f.number("node"), seen, f.text("detail")
    )


_READERS: dict[str, Callable[[_Fields], Message]] = {
    "sweep": _sweep,
    "swept": _swept,
    "done": _done,
    "proof": _proof_message,
    "inventory": _inventory,
    "claim": _claim,
    "forward": _forward,
    "outcome": _outcome,
}
