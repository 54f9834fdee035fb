"""Shared fixtures for the ccs tests: a private copy of fixtures/ccs and fixtures/keys.

Git does not keep file modes, so the key files in a checkout may be 0644. The tests load
the fixtures from a copy whose keys are 0600 (relative key paths like ``../keys/host1.key``
still resolve, since both directories are copied side by side).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.ccs.cases import stage_tree


@pytest.fixture(scope="session")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a session-wide copy: ``staged / "ccs" / NAME`` and ``staged / "keys" / NAME``.

    Tests must not modify it; a test that needs other modes stages its own copy in tmp_path.
    """
    root = tmp_path_factory.mktemp("fixtures")
    stage_tree(root)
    return root


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """check-config resolves node names; tests answer from a table instead of sending DNS
    queries off the machine."""
    import ccs.source
    from tests.unit.ccs.cases import fake_resolver

    monkeypatch.setattr(ccs.source, "resolve", fake_resolver)
