"""Shared fixtures: the captured reference key and a manual clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "unit"))

import refvectors  # noqa: E402
from fakes import ManualClock  # noqa: E402

from xvmd.protocol.auth import Key  # noqa: E402


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
