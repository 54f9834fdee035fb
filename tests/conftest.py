"""Shared fixtures: the captured reference key and a manual clock."""

from __future__ import annotations

import pytest

from tests.unit import refvectors
from tests.unit.fakes import ManualClock
from xvmd.protocol.auth import Key


@pytest.fixture
def ref_key_bytes() -> bytes:
    if not refvectors.AVAILABLE:
        pytest.skip(refvectors.SKIP_REASON)
    return refvectors.key_bytes()


@pytest.fixture
def ref_key(ref_key_bytes: bytes) -> Key:
    return Key(ref_key_bytes)


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


def pytest_configure(config: pytest.Config) -> None:
    # In CI (.ci/run sets XVMD_STRICT=1) missing reference vectors fail the run, never skip it.
    import os

    if os.environ.get("XVMD_STRICT") == "1" and not refvectors.AVAILABLE:
        raise pytest.UsageError(f"XVMD_STRICT=1: {refvectors.SKIP_REASON}")
