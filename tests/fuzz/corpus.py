"""Shared material for the fuzz tests: keys, signed packets, captured vectors, mutations, budgets.

Budgets: the default (CI) run is short. ``XVMD_FUZZ_LONG=1`` multiplies every hypothesis
``max_examples`` by ``LONG_FACTOR`` and makes ``test_soak`` feed one million datagrams and one
million TCP byte streams (see docs/robustness.md).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import Sequence
from pathlib import Path

from hypothesis import HealthCheck, settings

from tests.unit import refvectors
from xvmd.protocol.auth import Key, sign_request
from xvmd.protocol.client import build_request
from xvmd.protocol.wire import HASH_OFFSET, HASH_SIZE, REQUEST_SIZE, HashType, Op

LONG = os.environ.get("XVMD_FUZZ_LONG") == "1"
LONG_FACTOR = 50


def examples(n: int) -> int:
    """``n`` hypothesis examples in CI, ``n * LONG_FACTOR`` with ``XVMD_FUZZ_LONG=1``."""
    return n * LONG_FACTOR if LONG else n


def fuzz_settings(n: int) -> settings:
    # No example database: nothing is written into the checkout; a failure prints its blob.
    return settings(
        max_examples=examples(n),
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


KEY = Key(bytes(range(256)) * 16)  # 4096 bytes, the size fence_xvm keys usually have
OTHER_KEY = Key(b"a different shared key")
EMPTY_KEY = Key(b"")
ZERO_HASH = b"\0" * HASH_SIZE
SIGNED_TYPES = (HashType.SHA1, HashType.SHA256, HashType.SHA512)
_ALGORITHMS = {1: "sha1", 2: "sha256", 3: "sha512"}

# name -> (offset, size) in the 176-byte request (docs/protocol.md, xvmd/protocol/wire.py)
FIELDS: dict[str, tuple[int, int]] = {
    "op": (0, 1),
    "hashtype": (1, 1),
    "addrlen": (2, 1),
    "flags": (3, 1),
    "domain": (4, 64),
    "address": (68, 28),
    "port": (96, 2),
    "random": (98, 6),
    "seqno": (104, 4),
    "family": (108, 4),
    "hash": (112, 64),
}


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _fill(size: int, b: int) -> bytes:
    return bytes([b]) * size


EXTREMES: dict[str, list[bytes]] = {
    "op": [bytes([v]) for v in (0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0x80, 0xFF)],
    "hashtype": [bytes([v]) for v in (0, 1, 2, 3, 4, 0x7F, 0xFF)],
    "addrlen": [bytes([v]) for v in (0, 4, 16, 17, 28, 0xFF)],
    "flags": [bytes([v]) for v in (0, 1, 0xFE, 0xFF)],
    "domain": [
        _fill(64, 0),
        _fill(64, 0xFF),
        b"A" * 64,  # no terminating NUL
        b"\xc3\x28\xa0\xa1\xf0\x28\x8c\xbc" + _fill(56, 0),  # invalid UTF-8
        b"\0" + b"hidden after the NUL".ljust(63, b"x"),
        b"6695eb01-f6a4-8304-79aa-97f2502e193f".ljust(64, b"\0"),
        "Ä😀".encode().ljust(64, b"\0"),
    ],
    "address": [
        _fill(28, 0),
        _fill(28, 0xFF),
        bytes([127, 0, 0, 1]) + _fill(24, 0),
        bytes(15) + b"\x01" + _fill(12, 0),  # ::1
        bytes([255, 255, 255, 255]) + _fill(24, 0xAA),
        bytes([225, 0, 0, 12]) + _fill(24, 0),
        b"\xfe\x80" + bytes(13) + b"\x01" + _fill(12, 0),  # link-local, no scope
    ],
    "port": [struct.pack("<H", v) for v in (0, 1, 1229, 0x8000, 0xFFFF)],
    "random": [_fill(6, 0), _fill(6, 0xFF)],
    "seqno": [_u32(v) for v in (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)],
    "family": [_u32(v) for v in (0, 1, 2, 3, 10, 11, 0x0A000000, 0x02000000, 0xFFFFFFFF)],
    "hash": [_fill(64, 0), _fill(64, 0xFF), _fill(32, 0xAB) + _fill(32, 0)],
}


def signed(
    op: Op = Op.STATUS,
    domain: str = "vm-01",
    *,
    key: Key = KEY,
    hashtype: HashType = HashType.SHA256,
    address: str | None = "127.0.0.1",
    port: int = 4242,
    seqno: int = 1,
    salt: bytes = b"\x01\x02\x03\x04\x05\x06",
) -> bytes:
    """A validly signed request, as the client builds it (the salt is zero when unsigned)."""
    return build_request(
        op, domain, key=key, hashtype=hashtype, address=address, port=port, seqno=seqno, salt=salt
    )


def set_field(raw: bytes, name: str, value: bytes) -> bytes:
    off, size = FIELDS[name]
    assert len(value) == size, (name, len(value))
    return raw[:off] + value + raw[off + size :]


def resign(raw: bytes, key: Key) -> bytes:
    """Sign ``raw`` again with the hash type it names (it must name a known one)."""
    return sign_request(raw[:HASH_OFFSET] + ZERO_HASH, HashType(raw[1]), key)


def flip_bits(raw: bytes, bits: Sequence[int]) -> bytes:
    out = bytearray(raw)
    for bit in bits:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def oracle(data: bytes, minimum: int, keys: Sequence[Key]) -> tuple[Key | None, str | None]:
    """What docs/protocol.md says the reject path decides, written independently of xvmd.

    A request is accepted when its hash type is known and at least ``minimum``, and (unless it
    is unsigned) its 64-byte hash field is ``pad64(H(key || data[:112] || 64 zero bytes))`` for
    one of the non-empty keys; the first such key is the one the session uses. An unsigned
    request proves no key (None): which key may answer its challenge is the service's choice.
    """
    ht = data[1]
    if ht > 3:
        return None, "hashtype"
    if ht < minimum:
        return None, "weak-hash"
    if ht == 0:
        return None, None
    usable = [k for k in keys if k.data]
    if not usable:
        return None, "no-key"
    for k in usable:
        d = hashlib.new(_ALGORITHMS[ht], k.data + data[:HASH_OFFSET] + ZERO_HASH).digest()
        if data[HASH_OFFSET:] == d.ljust(HASH_SIZE, b"\0"):
            return k, None
    return None, "bad-signature"


# -- captured reference traffic ------------------------------------------------------------------


def reference_key() -> Key | None:
    return Key(refvectors.key_bytes()) if refvectors.AVAILABLE else None


def reference_datagrams() -> list[bytes]:
    """Every captured request datagram (``*.udp*.hex``), or [] when the vectors are absent."""
    if not refvectors.AVAILABLE:
        return []
    out = []
    for path in sorted(Path(refvectors.VECTOR_DIR).glob("*.udp*.hex")):
        raw = bytes.fromhex(path.read_text().strip())
        if len(raw) == REQUEST_SIZE:
            out.append(raw)
    return out


# -- mutations for plain seeded loops (soak test, atheris seeds) ---------------------------------

_FIELD_NAMES = list(FIELDS)


def mutate(rng: random.Random, base: bytes, pool: Sequence[bytes]) -> bytes:
    """One random mutation of ``base``; may return ``base`` unchanged (callers check)."""
    kind = rng.randrange(9)
    if kind == 0:  # a few bit flips
        bits = rng.sample(range(len(base) * 8), rng.randint(1, 8)) if base else []
        return flip_bits(base, bits)
    if kind == 1:  # one byte set to an interesting value
        if not base:
            return base
        i = rng.randrange(len(base))
        return base[:i] + bytes([rng.choice((0, 1, 0x7F, 0x80, 0xFF))]) + base[i + 1 :]
    if kind == 2 and len(base) == REQUEST_SIZE:  # one field to an extreme
        name = rng.choice(_FIELD_NAMES)
        return set_field(base, name, rng.choice(EXTREMES[name]))
    if kind == 3:  # truncated
        return base[: rng.randrange(len(base) + 1)]
    if kind == 4:  # extended
        return base + rng.randbytes(rng.choice((1, 2, 64, 400, 1400)))
    if kind == 5 and pool:  # spliced with another packet
        other = rng.choice(pool)
        cut = rng.randrange(min(len(base), len(other)) + 1)
        return base[:cut] + other[cut:]
    if kind == 6:  # random bytes of the right size
        return rng.randbytes(REQUEST_SIZE)
    if kind == 7:  # random bytes of any size
        return rng.randbytes(rng.choice((0, 1, 2, 111, 112, 175, 177, 512, 9000)))
    # a run of bytes overwritten with random data
    if not base:
        return base
    i = rng.randrange(len(base))
    n = rng.randint(1, 16)
    return base[:i] + rng.randbytes(min(n, len(base) - i)) + base[i + n :]


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
