"""Signatures and challenge answers: ``H(key || data)`` zero-padded to 64 bytes.

Rules for this module:
1. No I/O. Key bytes come in from the caller; nothing here reads files or draws randomness.
2. Every comparison covers all 64 bytes (padding included) and runs in constant time.

This is deliberately *not* HMAC: the stock client hashes the raw key bytes followed by the
message in one context, and compatibility demands the same. Two weaknesses follow, both closed
here without leaving the protocol:

- **Reflection.** The daemon answers ``H(key || C1)`` for any 64 bytes a client sends, so its
  own challenge sent back by a client (on another session, or to another daemon holding the
  same key) would be answered. xvmd's challenges are 32 random bytes and a 32-byte HMAC tag of
  them (``tagged_challenge``); a client challenge carrying a valid tag is never answered
  (``is_tagged``). The stock client treats the challenge as opaque bytes.
- **Length extension.** From ``H(key || C1)`` anyone can compute ``H(key || C1 || pad || X)``
  (SHA-1 and SHA-2 are Merkle-Damgard hashes). A request signed that way has the hash
  padding of ``key || 64 bytes`` right after its first 64 bytes; ``check_datagram`` refuses
  exactly that shape (``forged``), which an honest packet never has.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

from xvmd.protocol.drops import DropReason
from xvmd.protocol.wire import (
    CHALLENGE_SIZE,
    HASH_OFFSET,
    HASH_SIZE,
    REQUEST_SIZE,
    FenceRequest,
    HashType,
)

if TYPE_CHECKING:
    from hashlib import _Hash

_ALGORITHMS = {HashType.SHA1: "sha1", HashType.SHA256: "sha256", HashType.SHA512: "sha512"}
_ZERO_HASH = b"\0" * HASH_SIZE
_DIGEST_SIZE = {1: 20, 2: 32, 3: 64}
_BLOCK = {1: (64, 8), 2: (64, 8), 3: (128, 16)}  # block size, length field size
_NONCE = 32
_TAG_CONTEXT = b"xvmd challenge tag\0"


def _extension_pad(key_len: int, code: int) -> bytes | None:
    """The hash padding after ``key || C1``: where a length-extended message continues. None
    when it cannot fit inside a signed request (it would reach past the 176 bytes)."""
    block, size = _BLOCK[code]
    total = key_len + CHALLENGE_SIZE
    pad = b"\x80" + b"\0" * ((-(total + 1 + size)) % block) + (8 * total).to_bytes(size, "big")
    return pad if CHALLENGE_SIZE + len(pad) <= REQUEST_SIZE else None


class Rejected(ValueError):
    """A request failed verification; ``reason`` names its drop counter."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _pad(digest: bytes) -> bytes:
    return digest + b"\0" * (HASH_SIZE - len(digest))


class Key:
    """Shared key bytes with one pre-keyed hash context per algorithm.

    Hashing the (up to 4096-byte) key once and copying the context per message keeps the
    reject path cheap under a flood of forged datagrams.
    """

    __slots__ = ("_bases", "_by_code", "_extension", "_tagger", "data", "id")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        # Names the key in bounded memories (which key holder filled what); reveals nothing.
        self.id = hashlib.sha256(b"xvmd key id\0" + self.data).digest()[:8]
        self._bases: dict[HashType, _Hash] = {}
        for ht, name in _ALGORITHMS.items():
            base = hashlib.new(name)
            base.update(self.data)
            self._bases[ht] = base
        # The reject path looks contexts up by the raw wire byte; an empty key has none.
        self._by_code: dict[int, _Hash] = (
            {int(ht): ctx for ht, ctx in self._bases.items()} if self.data else {}
        )
        self._extension = {int(ht): _extension_pad(len(self.data), int(ht)) for ht in _ALGORITHMS}
        self._tagger = hmac.new(self.data, _TAG_CONTEXT, "sha256")

    def __repr__(self) -> str:  # never show key material
        return f"Key(<{len(self.data)} bytes>)"

    def digest(self, hashtype: HashType, message: bytes) -> bytes:
        """``pad64(H(key || message))``; for NONE, 64 zero bytes."""
        if hashtype is HashType.NONE:
            return _ZERO_HASH
        ctx = self._bases[hashtype].copy()
        ctx.update(message)
        return _pad(ctx.digest())

    def matches(self, hashtype: HashType, message: bytes, answer: bytes) -> bool:
        """Constant-time check of a 64-byte answer to ``message``."""
        if hashtype is HashType.NONE:
            return True
        return hmac.compare_digest(self.digest(hashtype, message), answer)

    def _tag(self, nonce: bytes) -> bytes:
        mac = self._tagger.copy()
        mac.update(nonce)
        return mac.digest()

    def tagged_challenge(self, nonce: bytes) -> bytes:
        """The daemon's 64-byte challenge: ``nonce`` (32 random bytes) and its tag, which only
        a holder of this key can make, so that no daemon with this key ever answers it."""
        if len(nonce) != _NONCE:
            raise ValueError(f"nonce must be {_NONCE} bytes")
        return nonce + self._tag(nonce)

    def is_tagged(self, challenge: bytes) -> bool:
        """True when ``challenge`` is one a daemon holding this key issued (a reflection)."""
        return len(challenge) == CHALLENGE_SIZE and hmac.compare_digest(
            self._tag(challenge[:_NONCE]), challenge[_NONCE:]
        )

    def extended(self, code: int, message: bytes) -> bool:
        """True when the signed ``message`` has the shape of a length extension of an answer
        this key gave to a 64-byte challenge (see the module docstring)."""
        pad = self._extension.get(code)
        return pad is not None and message[CHALLENGE_SIZE : CHALLENGE_SIZE + len(pad)] == pad


def sign_request(unsigned: bytes, hashtype: HashType, key: Key) -> bytes:
    """Fill the hash field of a 176-byte request (the client side, for tests and tools)."""
    if len(unsigned) != REQUEST_SIZE:
        raise ValueError(f"request must be {REQUEST_SIZE} bytes")
    body = bytes([unsigned[0], int(hashtype)]) + unsigned[2:HASH_OFFSET]
    return body + key.digest(hashtype, body + _ZERO_HASH)


Verdict: TypeAlias = tuple[Key | None, DropReason | None]
"""``check_datagram``'s answer: ``(key, None)`` accepted, ``(None, reason)`` rejected."""

# An unsigned request proves no key, whatever is loaded: never "the first key". Which key may
# answer its challenge, and so whose scope it gets, is decided in ``xvmd.core.intake``.
_ACCEPTED_UNSIGNED: Verdict = (None, None)


def check_datagram(data: bytes, minimum: int, keys: Sequence[Key]) -> Verdict:
    """The reject path for raw 176-byte datagrams: hash type, then one digest per key.

    Works on the bytes as received (no parsing, no copies of the packet), because most of
    what a flood brings is rejected here.

    Returns:
        ``(key, None)`` when accepted, with the key whose signature matched (None for an
        unsigned request under minimum NONE: no key is proven, the caller decides which key
        may answer its challenge), or ``(None, reason)`` when rejected.
    """
    hashtype = data[1]
    if hashtype > 3:
        return _REJECT_HASHTYPE
    if hashtype < minimum:
        return _REJECT_WEAK
    if hashtype == 0:
        return _ACCEPTED_UNSIGNED
    # One copy of the signed part with the hash zeroed; the digest is compared in place.
    message = data[:HASH_OFFSET] + _ZERO_HASH
    size = _DIGEST_SIZE[hashtype]
    got = data[HASH_OFFSET : HASH_OFFSET + size]
    padding_ok = data[HASH_OFFSET + size :] == _ZERO_HASH[: HASH_SIZE - size]
    tried = False
    for key in keys:
        ctx = key._by_code.get(hashtype)
        if ctx is None:
            continue
        tried = True
        ctx = ctx.copy()
        ctx.update(message)
        if hmac.compare_digest(ctx.digest(), got) and padding_ok:
            return _REJECT_FORGED if key.extended(hashtype, message) else (key, None)
    return _REJECT_SIGNATURE if tried else _REJECT_NO_KEY


# Prebuilt: the reject path allocates nothing per forged packet.
_REJECT_HASHTYPE: Verdict = (None, DropReason.HASHTYPE)
_REJECT_WEAK: Verdict = (None, DropReason.WEAK_HASH)
_REJECT_NO_KEY: Verdict = (None, DropReason.NO_KEY)
_REJECT_SIGNATURE: Verdict = (None, DropReason.BAD_SIGNATURE)
_REJECT_FORGED: Verdict = (None, DropReason.FORGED)

_DETAILS = {
    DropReason.HASHTYPE: "unknown hash type",
    DropReason.WEAK_HASH: "hash is weaker than the configured minimum",
    DropReason.NO_KEY: "signed request but no key is loaded",
    DropReason.BAD_SIGNATURE: "signature matches no configured key",
    DropReason.FORGED: "signature made by length extension of a challenge answer (an attack)",
}


def verify_request(req: FenceRequest, minimum: HashType, keys: Sequence[Key]) -> Key | None:
    """Accept a request signed with ``minimum`` or a stronger hash under one of ``keys``.

    Returns:
        The key that verified the signature (the session must use the same one), or None for
        an unsigned request, which is accepted only when ``minimum`` is NONE.

    Raises:
        Rejected: weaker hash than configured, no key for a signed request, or a bad digest.
    """
    key, reason = check_datagram(req.raw, minimum, keys)
    if reason is not None:
        if reason is DropReason.WEAK_HASH:
            raise Rejected(
                reason,
                f"hash {req.hashtype.label} is weaker than the configured minimum {minimum.label}",
            )
        raise Rejected(reason, _DETAILS[reason])
    return key
