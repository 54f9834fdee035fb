"""Access to the captured fence_xvm / fence_virtd traffic in ``fixtures/vectors``.

The vectors are genuine: the Debian 12 ``fence_xvm`` client talking to the real ``fence_virtd``
(see ``README.md`` beside them). ``XVMD_REFERENCE_VECTORS`` points at another directory of the
same layout; when it is absent, the tests that need it are skipped (``AVAILABLE`` is False), or
fail under ``XVMD_STRICT=1``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Part of the repository, so that a clone with nothing beside it passes its own tests.
_DEFAULT_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "vectors"
VECTOR_DIR = Path(os.environ.get("XVMD_REFERENCE_VECTORS", str(_DEFAULT_DIR)))
AVAILABLE = (VECTOR_DIR / "sessions.json").is_file() and (VECTOR_DIR / "fence_xvm.key").is_file()
SKIP_REASON = f"captured reference vectors not found in {VECTOR_DIR}"

TEST_DOMAIN = "test"
TEST_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


@dataclass(frozen=True)
class UdpVector:
    """One captured request datagram and the fields ``sessions.json`` decoded from it."""

    session: str
    file: str
    raw: bytes
    fields: dict[str, Any]

    @property
    def id(self) -> str:
        return self.file.removesuffix(".hex")


@dataclass(frozen=True)
class TcpExchange:
    """The TCP payload segments of one session, in capture order."""

    session: str
    segments: list[tuple[str, bytes]]  # ("C>D" | "D>C", payload)

    def client(self) -> list[bytes]:
        return [data for who, data in self.segments if who == "C>D"]

    def daemon(self) -> list[bytes]:
        return [data for who, data in self.segments if who == "D>C"]


def key_bytes() -> bytes:
    return (VECTOR_DIR / "fence_xvm.key").read_bytes()


def sessions() -> list[dict[str, Any]]:
    if not AVAILABLE:
        return []
    data: list[dict[str, Any]] = json.loads((VECTOR_DIR / "sessions.json").read_text())
    return data


def udp_vectors() -> list[UdpVector]:
    out = []
    for s in sessions():
        for u in s["udp"]:
            raw = bytes.fromhex((VECTOR_DIR / u["file"]).read_text().strip())
            out.append(UdpVector(s["name"], u["file"], raw, u))
    return out


def parse_tcp_file(path: Path) -> list[tuple[str, bytes]]:
    segments = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        who, hexdata = line.split(None, 1)
        assert who in ("C>D", "D>C"), line
        segments.append((who, bytes.fromhex(hexdata)))
    return segments


def tcp_exchanges() -> list[TcpExchange]:
    out = []
    for s in sessions():
        name = s.get("tcp_file")
        if name:
            out.append(TcpExchange(s["name"], parse_tcp_file(VECTOR_DIR / name)))
    return out


def authenticated_exchanges() -> list[TcpExchange]:
    """The exchanges that ran the sha256 challenge-response (``auth-sha256`` in the name)."""
    return [t for t in tcp_exchanges() if "auth-sha256" in t.session]


def exchange(prefix: str) -> TcpExchange:
    for t in tcp_exchanges():
        if t.session.startswith(prefix):
            return t
    raise LookupError(prefix)
