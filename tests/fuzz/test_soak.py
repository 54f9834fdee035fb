"""The seeded soak loop (``tests/fuzz/soak.py``), short in CI, one million with XVMD_FUZZ_LONG=1."""

from __future__ import annotations

from tests.fuzz import soak
from tests.fuzz.corpus import LONG


def test_soak() -> None:
    if LONG:
        report = soak.run(datagrams=1_000_000, streams=1_000_000, socket_streams=20_000)
    else:
        report = soak.run(datagrams=30_000, streams=30_000, socket_streams=300)
    print("\n".join(report.lines()))
    soak.check(report)
    assert report.forged > 0.9 * report.datagrams
    assert report.authenticated > 0
