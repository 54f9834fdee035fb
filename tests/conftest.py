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
