"""Rules for the tests themselves, checked on their source.

1. A test reads only public attributes of the objects it checks: a private one ties the test to
   an implementation detail, and the refactoring it should protect breaks it instead.
2. Unit and fuzz tests never wait on the wall clock (``sleep`` of a positive literal): they
   await an event, a condition (``fakes.until``) or an injected clock, so they neither flake
   on a slow machine nor waste time on a fast one. End-to-end tests drive real processes and
   may poll.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# Private by convention but public API of the standard library (namedtuple, argparse, os).
STDLIB_PUBLIC = {"_replace", "_asdict", "_fields", "_make", "_exit", "_actions"}


def private_reads(source: str) -> list[tuple[int, str]]:
    """(line, expression) of every ``obj._name`` where ``obj`` is not ``self`` or ``cls``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in STDLIB_PUBLIC:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def wall_clock_sleeps(source: str) -> list[tuple[int, str]]:
    """(line, call) of every ``….sleep(N)`` or ``sleep(N)`` with a positive number literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or len(node.args) != 1:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        arg = node.args[0]
        literal = arg.value if isinstance(arg, ast.Constant) else None
        if name == "sleep" and isinstance(literal, int | float) and literal > 0:
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def _sources(*parts: str) -> list[Path]:
    return sorted(p for part in parts for p in (TESTS / part).rglob("*.py"))


def test_the_checks_find_what_they_look_for() -> None:
    source = "x = obj._hidden\ny = self._mine\nz = t._replace(a=1)\n"
    assert private_reads(source) == [(1, "obj._hidden")]
    source = "await asyncio.sleep(0.2)\ntime.sleep(1)\nawait asyncio.sleep(0)\nclock.sleep(s)\n"
    assert wall_clock_sleeps(source) == [(1, "asyncio.sleep(0.2)"), (2, "time.sleep(1)")]


@pytest.mark.parametrize("path", _sources("."), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_reads_a_private_attribute(path: Path) -> None:
    assert private_reads(path.read_text()) == []


@pytest.mark.parametrize("path", _sources("unit", "fuzz"), ids=lambda p: str(p.relative_to(TESTS)))
def test_unit_and_fuzz_tests_do_not_sleep_on_the_wall_clock(path: Path) -> None:
    assert wall_clock_sleeps(path.read_text()) == []
