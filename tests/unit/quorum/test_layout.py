"""xvmd/quorum's own layering: pure modules do no I/O, only the binding uses ctypes, nobody
sleeps on the event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import xvmd.quorum

PACKAGE = Path(xvmd.quorum.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
PURE = ("__init__.py", "corotypes.py", "status.py")
NO_IO = {"socket", "asyncio", "time", "os", "random", "subprocess", "threading", "ctypes"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_do_no_io(name: str) -> None:
    assert not imports(PACKAGE / name) & NO_IO


def test_only_the_binding_uses_ctypes() -> None:
    assert {p.name for p in MODULES if "ctypes" in imports(p)} == {"binding.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_nothing_sleeps_on_the_loop(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "sleep":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "time"), path.name
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            assert "sleep" not in {a.name for a in node.names}, path.name
