"""Signatures and challenge answers: ``H(key || data)`` zero-padded to 64 bytes.

Rules for this module:
1. No I/O. Key bytes come in from the caller; nothing here reads files or draws randomness.
2. Every comparison covers all 64 bytes (padding included) and runs in constant time.

This is deliberately *not* HMAC: the stock client hashes the raw key bytes followed by the
message in one context, and compatibility demands the same.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .wire import HASH_OFFSET, HASH_SIZE, REQUEST_SIZE, FenceRequest, HashType

if TYPE_CHECKING:
    from hashlib import _Hash

_ALGORITHMS = {HashType.SHA1: "sha1", HashType.SHA256: "sha256", HashType.SHA512: "sha512"}
_ZERO_HASH = b"\0" * HASH_SIZE


class Rejected(ValueError):
    """A request failed verification; ``reason`` is a short stable tag for counters and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _pad(digest: bytes) -> bytes:
    return digest + b"\0" * (HASH_SIZE - len(digest))


class Key:
    """Shared key bytes with one pre-keyed hash context per algorithm.

    Hashing the (up to 4096-byte) key once and copying the context per message keeps the
    reject path cheap under a flood of forged datagrams.
    """

    __slots__ = ("_bases", "data")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self._bases: dict[HashType, _Hash] = {}
        for ht, name in _ALGORITHMS.items():
            base = hashlib.new(name)
            base.update(self.data)
            self._bases[ht] = base

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


def sign_request(unsigned: bytes, hashtype: HashType, key: Key) -> bytes:
    """Fill the hash field of a 176-byte request (the client side, for tests and tools)."""
    if len(unsigned) != REQUEST_SIZE:
        raise ValueError(f"request must be {REQUEST_SIZE} bytes")
    body = bytes([unsigned[0], int(hashtype)]) + unsigned[2:HASH_OFFSET]
    return body + key.digest(hashtype, body + _ZERO_HASH)


def verify_request(req: FenceRequest, minimum: HashType, keys: Sequence[Key]) -> Key | None:
    """Accept a request signed with ``minimum`` or a stronger hash under one of ``keys``.

    Returns:
        The key that verified the signature (the session must use the same one), or None for
        an unsigned request, which is accepted only when ``minimum`` is NONE.

    Raises:
        Rejected: weaker hash than configured, no key for a signed request, or a bad digest.
    """
    if req.hashtype < minimum:
        raise Rejected(
            "weak-hash",
            f"hash {req.hashtype.label} is weaker than the configured minimum {minimum.label}",
        )
    if req.hashtype is HashType.NONE:
        return keys[0] if keys else None
    usable = [k for k in keys if k.data]
    if not usable:
        raise Rejected("no-key", "signed request but no key is loaded")
    message = req.raw[:HASH_OFFSET] + _ZERO_HASH
    for key in usable:
        if hmac.compare_digest(key.digest(req.hashtype, message), req.digest):
            return key
    raise Rejected("bad-signature", "signature matches no configured key")
