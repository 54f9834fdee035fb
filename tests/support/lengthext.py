"""SHA-256 length extension, for tests that attack the daemon's signatures.

Requests are signed ``H(key || packet)`` (not HMAC) for compatibility, and the daemon answers
``H(key || C1)`` for a client's 64-byte challenge. From that answer and the key's length alone,
SHA-256's compression run from the answer's state signs a longer message; the daemon must
refuse requests made that way (xvmd/protocol/auth.py).
"""

from __future__ import annotations

import math
import struct

from xvmd.protocol.wire import CHALLENGE_SIZE, HASH_OFFSET, REQUEST_SIZE

SEQNO_AT = 104  # offset of the seqno in a request (docs/protocol.md §2)


def _icbrt(n: int) -> int:
    x = 1 << -(-n.bit_length() // 3)  # at least the cube root: Newton descends to the floor
    while True:
        y = (2 * x + n // (x * x)) // 3
        if y >= x:
            return x
        x = y


def _first_primes(n: int) -> list[int]:
    found: list[int] = []
    k = 2
    while len(found) < n:
        if all(k % p for p in found):
            found.append(k)
        k += 1
    return found


_MASK = 0xFFFFFFFF
_K256 = [_icbrt(p << 96) & _MASK for p in _first_primes(64)]
IV256 = tuple(math.isqrt(p << 64) & _MASK for p in _first_primes(8))


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _MASK


def sha256_blocks(state: tuple[int, ...], data: bytes) -> tuple[int, ...]:
    """SHA-256's compression over whole 64-byte blocks, from any state (length extension)."""
    for at in range(0, len(data), 64):
        w = list(struct.unpack(">16I", data[at : at + 64]))
        for i in range(16, 64):
            s0 = _rotr(w[i - 15], 7) ^ _rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            s1 = _rotr(w[i - 2], 17) ^ _rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w.append((w[i - 16] + s0 + w[i - 7] + s1) & _MASK)
        a, b, c, d, e, f, g, h = state
        for i in range(64):
            t1 = h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g))
            t1 = (t1 + _K256[i] + w[i]) & _MASK
            t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
            a, b, c, d, e, f, g, h = (t1 + t2) & _MASK, a, b, c, (d + t1) & _MASK, e, f, g
        state = tuple((x + y) & _MASK for x, y in zip(state, (a, b, c, d, e, f, g, h), strict=True))
    return state


def md_pad(n: int) -> bytes:
    """What SHA-256 appends to an ``n``-byte message."""
    return b"\x80" + b"\0" * ((55 - n) % 64) + struct.pack(">Q", n * 8)


def forge(prefix: bytes, answer: bytes, key_len: int, seqno: int) -> bytes:
    """A request whose signature verifies, made from the daemon's answer to the challenge
    ``prefix`` (the request's first 64 bytes) and the key's length alone. It works when SHA-256's
    padding of key || prefix ends before the family field: ``key_len % 64`` in 20..55 (24..55 for
    a chosen seqno; else the padding covers it)."""
    glue = md_pad(key_len + CHALLENGE_SIZE)
    rest = bytearray(REQUEST_SIZE - CHALLENGE_SIZE - len(glue))  # up to the end, hash zero
    at = SEQNO_AT - CHALLENGE_SIZE - len(glue)
    assert at >= 0, "the padding covers the seqno: no forgery for this key length"
    rest[at : at + 4] = seqno.to_bytes(4, "little")
    total = key_len + CHALLENGE_SIZE + len(glue) + len(rest)
    state = struct.unpack(">8I", answer[:32])
    digest = struct.pack(">8I", *sha256_blocks(state, bytes(rest) + md_pad(total)))
    return (prefix + glue + bytes(rest))[:HASH_OFFSET] + digest + bytes(32)
