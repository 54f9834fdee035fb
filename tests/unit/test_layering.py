"""The dependency rules of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.harness import REPO

PURE_FORBIDDEN = {
    "socket",
    "asyncio",
    "time",
    "os",
    "random",
    "subprocess",
    "libvirt",
    "pyroute2",
    "watchdog",
    "prometheus_client",
    "threading",
    "secrets",
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def calls_open(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"
        for n in ast.walk(tree)
    )


SOURCES = sorted([*REPO.glob("xvmd/**/*.py"), *REPO.glob("ccs/**/*.py")])


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


@pytest.mark.parametrize(
    "module",
    [
        *sorted(REPO.glob("xvmd/protocol/*.py")),
        REPO / "xvmd/core/policy.py",
        REPO / "xvmd/core/intake.py",
        REPO / "xvmd/core/addresses.py",
        REPO / "xvmd/core/limits.py",
        REPO / "xvmd/core/droplog.py",
        REPO / "xvmd/quorum/__init__.py",
        REPO / "xvmd/quorum/corotypes.py",
        REPO / "xvmd/quorum/status.py",
        *(
            REPO / f"xvmd/hosts/{m}.py"
            for m in ("messages", "table", "decide", "rounds", "fencehistory")
        ),
        *(
            REPO / f"ccs/{m}.py"
            for m in (
                "issues",
                "model",
                "parse",
                "lines",
                "limits",
                "validate",
                "crosscheck",
                "reload",
                "document",
            )
        ),
    ],
    ids=rel,
)
def test_pure_modules_do_no_io(module: Path) -> None:
    bad = top(imports(module)) & PURE_FORBIDDEN
    if module.name == "model.py":
        bad -= {"os"}  # os.path only: joining a relative key path to the config directory
    assert not bad, f"{rel(module)} imports {bad}"
    assert not calls_open(module), f"{rel(module)} opens files"


@pytest.mark.parametrize(
    ("library", "owners"),
    [
        ("libvirt", {"xvmd/backend/libvirt.py", "xvmd/backend/libvirt_events.py"}),
        ("pyroute2", {"xvmd/net/iface.py"}),
        ("watchdog", {"ccs/watch.py"}),
        ("prometheus_client", {"xvmd/daemon/metrics.py"}),
        (
            "lxml",
            {
                "ccs/parse.py",
                "ccs/lines.py",
                "ccs/cib.py",
                "ccs/pacemaker.py",
                "xvmd/hosts/fencehistory.py",
            },
        ),
        ("ctypes", {"xvmd/quorum/binding.py", "xvmd/hosts/cpgbinding.py"}),
    ],
)
def test_each_library_has_one_owner(library: str, owners: set[str]) -> None:
    users = {rel(p) for p in SOURCES if library in top(imports(p))}
    assert users == owners


# Each package of xvmd and the packages it may import: the layers of docs/architecture.md.
LOWER = {
    "protocol": set(),
    "backend": set(),
    "quorum": set(),
    "net": {"protocol"},
    "hosts": {"protocol", "backend", "quorum"},
    "core": {"protocol", "net", "backend", "quorum", "hosts"},
    "daemon": {"core", "protocol", "net", "backend", "quorum", "hosts"},
    "cli": {"daemon", "core", "protocol", "net", "backend", "quorum", "hosts"},
}


@pytest.mark.parametrize("package", sorted(LOWER))
def test_each_package_imports_only_the_layers_below(package: str) -> None:
    allowed = LOWER[package] | {package}
    for path in REPO.glob(f"xvmd/{package}/*.py"):
        used = {n.split(".")[1] for n in imports(path) if n.startswith("xvmd.")}
        assert used <= allowed, f"{rel(path)} imports xvmd.{sorted(used - allowed)}"


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in REPO.glob("xvmd/*/__init__.py")}
    assert packages == set(LOWER)


def test_ccs_never_imports_xvmd() -> None:
    for path in REPO.glob("ccs/**/*.py"):
        assert "xvmd" not in top(imports(path)), rel(path)
    # ...including relative imports that climb out of the package.
    for path in REPO.glob("ccs/**/*.py"):
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.ImportFrom) and n.level > 1 for n in ast.walk(tree))


# pyproject name -> import name, for the dependencies whose names differ
IMPORT_NAME = {"libvirt-python": "libvirt", "prometheus-client": "prometheus_client"}


def test_every_runtime_dependency_is_used() -> None:
    """A dependency earns its place by being imported; the Debian package mirrors the list."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    used = set().union(*(top(imports(p)) for p in SOURCES))
    unused = {n for n in names if IMPORT_NAME.get(n, n) not in used}
    assert not unused, f"declared in pyproject.toml but imported nowhere: {unused}"
