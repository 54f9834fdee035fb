"""The Debian package: built offline by contrib/debian/build-deb.sh, inspected with dpkg-deb, and
what it installs run on Debian's own /usr/bin/python3 with Debian's python3-* modules (not the
virtualenv). Also: the committed manual page docs/xvmd.8 is what gen_manpage.py makes now.

Debian's modules come from apt (python3-lxml python3-libvirt python3-pyroute2
python3-watchdog); without them the tests that run packaged code skip, or
fail under XVMD_STRICT=1.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.harness import DOMAINS_XML, FENCE_XVM, FIXTURES, REPO, Netns, parse_list

pytestmark = pytest.mark.e2e

BUILD_DEB = REPO / "contrib" / "debian" / "build-deb.sh"
GEN_MANPAGE = REPO / "contrib" / "man" / "gen_manpage.py"
MANPAGE = REPO / "docs" / "xvmd.8"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_MODULES = ("lxml", "libvirt", "pyroute2", "watchdog", "uvloop")
APT_PACKAGES = (
    "python3-lxml",
    "python3-libvirt",
    "python3-pyroute2",
    "python3-watchdog",
    "python3-uvloop",
)
SITE = "usr/lib/python3/dist-packages"

DEPENDS = {
    "python3 (>= 3.11)",
    "python3-lxml",
    "python3-libvirt",
    "python3-pyroute2",
    "python3-watchdog",
    "python3-uvloop",
    "python3-prometheus-client",
}
RECOMMENDS = {"libquorum5", "libvotequorum8", "libcmap4", "libcfg7", "fence-virt"}
SUGGESTS = {"corosync", "libvirt-daemon-system"}
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")


def run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_manpage", GEN_MANPAGE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def generate_manpage() -> str:
    proc = run([sys.executable, str(GEN_MANPAGE)], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def expected_files() -> set[str]:
    """Every file the package must hold, as dpkg-deb -c spells it ("./usr/sbin/xvmd")."""
    files = {
        "./usr/sbin/xvmd",
        "./lib/systemd/system/xvmd.service",
        "./lib/systemd/system/xvmd@.service",
        "./etc/default/xvmd",
        "./etc/logrotate.d/xvmd",
        "./usr/share/man/man8/xvmd.8.gz",
        "./usr/share/doc/xvmd/README.md",
        "./usr/share/doc/xvmd/copyright",
    }
    files |= python_files()
    files |= {f"./usr/share/doc/xvmd/docs/{md.name}" for md in (REPO / "docs").glob("*.md")}
    examples = REPO / "contrib" / "examples"
    if examples.is_dir():
        files |= {
            f"./usr/share/doc/xvmd/examples/{f.relative_to(examples).as_posix()}"
            for f in examples.rglob("*")
            if f.is_file() and not f.name.startswith(".")
        }
    return files


def python_files() -> set[str]:
    out = set()
    for pkg in ("xvmd", "ccs"):
        for f in (REPO / pkg).rglob("*"):
            if (
                f.is_file()
                and "__pycache__" not in f.parts
                and (f.suffix == ".py" or f.name == "py.typed")
            ):
                out.add(f"./{SITE}/{f.relative_to(REPO).as_posix()}")
    return out


def control_fields(text: str) -> dict[str, str]:
    """deb822 stanza -> {field: value}; continuation lines joined with newlines."""
    fields: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith((" ", "\t")) and key:
            fields[key] += "\n" + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            fields[key] = value.strip()
    return fields


def relations(value: str) -> set[str]:
    return {" ".join(part.split()) for part in value.split(",") if part.strip()}


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("dpkg-deb", "gzip"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    out = tmp_path_factory.mktemp("deb")
    # The man page is generated with this interpreter (it needs lxml); the rest is dpkg-deb.
    proc = run(["bash", str(BUILD_DEB), str(out)], env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    debs = sorted(out.glob("*.deb"))
    assert [d.name for d in debs] == [f"xvmd_{VERSION}_all.deb"], proc.stdout
    return debs[0]


@pytest.fixture(scope="module")
def extracted(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    proc = run(["dpkg-deb", "-x", str(deb), str(root)])
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def control_dir(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ctl = tmp_path_factory.mktemp("control") / "DEBIAN"
    proc = run(["dpkg-deb", "-e", str(deb), str(ctl)])
    assert proc.returncode == 0, proc.stderr
    return ctl


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the virtualenv or any PYTHON* setting leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "NOTIFY_SOCKET")
    }
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave the extracted tree as dpkg wrote it
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def debian_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/usr/bin/python3 with Debian's python3-* modules; skip (fail under XVMD_STRICT=1) if not."""
    problem = None
    if not os.path.exists(DEBIAN_PYTHON):
        problem = f"{DEBIAN_PYTHON} does not exist"
    else:
        proc = run(
            [DEBIAN_PYTHON, "-c", f"import {', '.join(DEBIAN_MODULES)}"],
            env=clean_env(),
            cwd=tmp_path_factory.mktemp("py"),
        )
        if proc.returncode != 0:
            problem = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    if problem is None:
        return DEBIAN_PYTHON
    message = (
        f"the packaged code runs on Debian's python3 modules, and {DEBIAN_PYTHON} cannot "
        f"import {', '.join(DEBIAN_MODULES)} ({problem}); install them with: apt-get install -y "
        f"--no-install-recommends {' '.join(APT_PACKAGES)}"
    )
    if os.environ.get("XVMD_STRICT") == "1":
        pytest.fail(f"XVMD_STRICT=1: {message}")
    pytest.skip(message)


def run_packaged(
    python: str, root: Path, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``/usr/bin/python3 <root>/usr/sbin/xvmd ARGS`` with only the extracted tree added."""
    return run(
        [python, str(root / "usr/sbin/xvmd"), *args],
        env=clean_env(PYTHONPATH=str(root / SITE)),
        cwd=cwd,
    )


# --- the committed manual page -------------------------------------------------------------------


def test_committed_manpage_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "xvmd.8"
    fresh.write_text(generate_manpage())
    assert MANPAGE.read_text() == fresh.read_text(), (
        "docs/xvmd.8 is out of date with the argparse parsers; regenerate it: "
        "python contrib/man/gen_manpage.py > docs/xvmd.8"
    )


def roff(text: str) -> str:
    return text.replace("-", "\\-")


def test_manpage_documents_every_command_and_option() -> None:
    from xvmd import cli

    _xvmd, commands = load_generator().load()
    names = [c.name for c in commands]
    assert names == ["xvmd", *(f"xvmd {s}" for s in cli.SUBCOMMANDS)]
    page = MANPAGE.read_text()
    for command in commands:
        assert f'.SY "{roff(command.name)}"' in page
        if command.name != "xvmd":
            assert f'.SS "{roff(command.name)}"' in page
        for action in command.parser._actions:
            for option in action.option_strings:
                assert f"\\fB{roff(option)}\\fR" in page, (command.name, option)
    sections = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "SIGNALS", "FILES")
    for section in (*sections, "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in page
    for path in ("/etc/cluster/cluster.conf", "/run/xvmd/xvmd.sock", "/var/lib/xvmd/audit.jsonl"):
        assert roff(path) in page
    for ref in ("fence_xvm", "fence_virtd", "corosync"):
        assert f".BR {roff(ref)} (" in page


def test_manpage_renders_without_warnings(tmp_path: Path) -> None:
    if shutil.which("man") is None:
        pytest.skip("needs man (man-db)")
    proc = run(
        ["man", "--warnings", "-E", "UTF-8", "-l", str(MANPAGE)],
        env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert "XVMD(8)" in proc.stdout
    assert "xvmd check-config" in proc.stdout


# --- the package itself --------------------------------------------------------------------------


def test_control_fields(deb: Path) -> None:
    info = run(["dpkg-deb", "-I", str(deb)])
    assert info.returncode == 0, info.stderr
    for member in ("control", "conffiles", *MAINTAINER_SCRIPTS):
        assert f" {member} " in info.stdout, member
    fields = control_fields(run(["dpkg-deb", "-f", str(deb)]).stdout)
    assert fields["Package"] == "xvmd"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == "all"
    assert fields["Maintainer"]
    assert fields["Section"] == "admin"
    assert int(fields["Installed-Size"]) > 0
    assert relations(fields["Depends"]) == DEPENDS
    assert relations(fields["Recommends"]) == RECOMMENDS
    assert relations(fields["Suggests"]) == SUGGESTS
    assert fields["Description"].startswith("fence_xvm-compatible")
    assert "not started" in fields["Description"]


def test_maintainer_scripts_enable_but_never_start(control_dir: Path) -> None:
    assert (control_dir / "conffiles").read_text() == "/etc/default/xvmd\n/etc/logrotate.d/xvmd\n"
    for name in MAINTAINER_SCRIPTS:
        script = control_dir / name
        assert script.stat().st_mode & 0o777 == 0o755, name
        assert script.read_text().startswith("#!/bin/sh\n"), name
        proc = run(["sh", "-n", str(script)])
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    postinst = "\n".join(
        ln for ln in (control_dir / "postinst").read_text().splitlines() if not ln.startswith("#")
    )
    assert "deb-systemd-helper enable" in postinst
    assert "invoke start" not in postinst and "systemctl start" not in postinst
    assert "try-restart" in postinst  # upgrades restart a running daemon only
    assert "deb-systemd-invoke stop" in (control_dir / "prerm").read_text()
    assert "deb-systemd-helper purge" in (control_dir / "postrm").read_text()


def test_contents(deb: Path) -> None:
    proc = run(["dpkg-deb", "-c", str(deb)])
    assert proc.returncode == 0, proc.stderr
    entries: dict[str, tuple[str, str]] = {}
    for listing in proc.stdout.splitlines():
        perms, owner, _size, _date, _time, path = listing.split(None, 5)
        entries[path] = (perms, owner)
    files = {p for p, (perms, _) in entries.items() if not perms.startswith("d")}
    missing = expected_files() - files
    assert not missing, f"not in the package: {sorted(missing)}"
    packaged_python = {p for p in files if p.startswith(f"./{SITE}/")}
    assert packaged_python == python_files(), "only the source packages go to dist-packages"
    assert not [p for p in entries if "__pycache__" in p or p.endswith(".pyc")]
    assert {owner for _, owner in entries.values()} == {"root/root"}
    assert entries["./usr/sbin/xvmd"][0] == "-rwxr-xr-x"
    for path in files - {"./usr/sbin/xvmd"}:
        assert entries[path][0] == "-rw-r--r--", path


def test_packaged_files_are_the_sources(extracted: Path) -> None:
    for unit in ("xvmd.service", "xvmd@.service"):
        assert (extracted / "lib/systemd/system" / unit).read_bytes() == (
            REPO / "contrib" / unit
        ).read_bytes()
    assert (extracted / "etc/default/xvmd").read_bytes() == (
        REPO / "contrib" / "default" / "xvmd"
    ).read_bytes()
    assert (extracted / "etc/logrotate.d/xvmd").read_bytes() == (
        REPO / "contrib" / "logrotate" / "xvmd"
    ).read_bytes()
    with gzip.open(extracted / "usr/share/man/man8/xvmd.8.gz", "rt") as fh:
        assert fh.read() == generate_manpage()
    for f in python_files():
        rel = f.removeprefix(f"./{SITE}/")
        assert (extracted / SITE / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    wrapper = (extracted / "usr/sbin/xvmd").read_text()
    assert wrapper.startswith("#!/usr/bin/python3\n")
    assert "from xvmd.cli import main" in wrapper


# --- the packaged code on Debian's python3 -------------------------------------------------------


def test_packaged_code_is_what_runs(debian_python: str, extracted: Path, tmp_path: Path) -> None:
    proc = run(
        [
            debian_python,
            "-c",
            "import ccs, lxml, xvmd; print(xvmd.__file__); print(ccs.__file__); "
            "print(lxml.__file__)",
        ],
        env=clean_env(PYTHONPATH=str(extracted / SITE)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    xvmd_file, ccs_file, lxml_file = proc.stdout.split()
    assert xvmd_file == str(extracted / SITE / "xvmd" / "__init__.py")
    assert ccs_file == str(extracted / SITE / "ccs" / "__init__.py")
    assert lxml_file.startswith("/usr/lib/python3/dist-packages/"), lxml_file


def test_version(debian_python: str, extracted: Path, tmp_path: Path) -> None:
    proc = run_packaged(debian_python, extracted, "--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"xvmd {VERSION}\n"


def test_check_config(debian_python: str, extracted: Path, tmp_path: Path) -> None:
    conf = FIXTURES / "ccs" / "two-host.conf"
    proc = run_packaged(
        debian_python, extracted, "check-config", "--no-resolve", "-f", str(conf), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "this host serves:" in proc.stdout
    assert f"{conf}: valid" in proc.stdout
    proc = run_packaged(
        debian_python,
        extracted,
        "check-config",
        "--no-resolve",
        "--json",
        "-f",
        str(conf),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["valid"] is True
    assert [d["device"] for d in doc["served"]] == ["xvm-host1", "xvm-host2"]
    broken = FIXTURES / "ccs" / "invalid-several.conf"
    proc = run_packaged(
        debian_python, extracted, "check-config", "--no-resolve", "-f", str(broken), cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr


@pytest.fixture
def packaged_daemon(
    debian_python: str, extracted: Path, netns: Netns, key_file: Path, port: int, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """The packaged daemon on Debian's python3, in the e2e network namespace (libvirt's test
    driver, --local --no-ccs: no corosync or libvirtd needed)."""
    log = tmp_path / "xvmd.log"
    sock = tmp_path / "xvmd.sock"
    args = [
        *("--local", "--no-ccs", "-k", str(key_file), "-I", "lo", "-p", str(port)),
        *("-U", f"test://{DOMAINS_XML}", "--control", str(sock)),
        *("--audit", str(tmp_path / "audit.jsonl")),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            netns.cmd(debian_python, str(extracted / "usr/sbin/xvmd"), *args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(PYTHONPATH=str(extracted / SITE)),
            cwd=tmp_path,
        )
    try:
        yield proc, log, sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_daemon_serves_and_stops(
    packaged_daemon: tuple[subprocess.Popen[bytes], Path, Path],
    debian_python: str,
    extracted: Path,
    netns: Netns,
    key_file: Path,
    port: int,
    tmp_path: Path,
) -> None:
    proc, log, sock = packaged_daemon
    deadline = time.monotonic() + 20
    while "xvmd ready" not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            pytest.fail(f"packaged xvmd exited with {proc.returncode}:\n{text}")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)
    if os.path.exists(FENCE_XVM):
        listed = subprocess.run(
            netns.cmd(FENCE_XVM, "-p", str(port), "-k", str(key_file), "-t", "10", "-o", "list"),
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "vm-01" in parse_list(listed.stdout)
    status = run_packaged(
        debian_python, extracted, "status", "--json", "--control", str(sock), cwd=tmp_path
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["version"] == VERSION
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, log.read_text(errors="replace")
