"""Fixtures shared by the in-process multi-host tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.hosts.test_multihost import cluster_conf
from xvmd.protocol.auth import Key


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Path, Key]:
    """A cluster.conf of three nodes on one fence_xvm device, and the device's key."""
    data = os.urandom(64)
    nodes = {"n1": ("xvm", "vm1"), "n2": ("xvm", "vm2"), "n3": ("xvm", "vm3")}
    return cluster_conf(tmp_path, {"xvm": data}, nodes), Key(data)
