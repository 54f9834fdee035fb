from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.corosync_lab import Lab
from tests.support.harness import DOMAINS_XML, Netns, Xvmd, missing_prerequisites

_ports = itertools.count(21000)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = missing_prerequisites()
    if not missing:
        return
    # In CI (.ci/run sets XVMD_STRICT=1) a missing peer is a failure, never a silent skip.
    if os.environ.get("XVMD_STRICT") == "1":
        raise pytest.UsageError(f"end-to-end prerequisites missing: {', '.join(missing)}")
    skip = pytest.mark.skip(reason=f"needs {', '.join(missing)}")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def port() -> int:
    return next(_ports)


def make_key(path: Path, size: int = 4096) -> Path:
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def key_file(key_dir: Path) -> Path:
    return make_key(key_dir / "fence_xvm.key")


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


XvmdFactory = Callable[..., Xvmd]


@pytest.fixture
def start_xvmd(netns: Netns, key_file: Path, tmp_path: Path) -> Iterator[XvmdFactory]:
    started: list[Xvmd] = []

    def start(
        *extra: str,
        port: int | None = None,
        key: Path | None = None,
        uri: str | None = None,
        ns: Netns | None = None,
        interface: str | None = "lo",
        no_ccs: bool = True,
        omit_port: bool = False,
        local: bool = True,
        env: dict[str, str] | None = None,
    ) -> Xvmd:
        p = port if port is not None else next(_ports)
        args = ["--local"] if local else []
        args += ["--control", str(tmp_path / f"ctl-{p}.sock")]
        args += ["--audit", str(tmp_path / f"audit-{p}.jsonl")]
        if no_ccs:
            args += ["--no-ccs", "-k", str(key or key_file)]
        if not omit_port:
            args += ["-p", str(p)]
        if interface:
            args += ["-I", interface]
        args += ["-U", uri or f"test://{DOMAINS_XML}", *extra]
        d = Xvmd(ns or netns, args, tmp_path / f"xvmd-{p}.log", port=p, env=env)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def corosync_installed() -> None:
    """Tests that start real corosync nodes need corosync and nsenter."""
    if shutil.which("corosync") is None or shutil.which("nsenter") is None:
        message = "needs corosync (apt-get install corosync) and nsenter"
        if os.environ.get("XVMD_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def pacemaker_installed() -> None:
    """Tests that start real Pacemaker on the corosync lab nodes need its daemons, its tools
    and the cluster user the packages create."""
    tools = ("pacemakerd", "stonith_admin", "crm_mon", "crm_attribute")
    missing = [t for t in tools if shutil.which(t) is None]
    try:
        import grp
        import pwd

        pwd.getpwnam("hacluster")
        grp.getgrnam("haclient")
    except KeyError:
        missing.append("user hacluster / group haclient")
    if missing:
        message = (
            f"needs {', '.join(missing)} "
            "(apt-get install --no-install-recommends pacemaker pacemaker-cli-utils)"
        )
        if os.environ.get("XVMD_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Real corosync nodes (tests/support/corosync_lab.py), all stopped and deleted after."""
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def libvirtd_installed() -> None:
    """Labs whose hypervisors are private libvirtds driven with virsh."""
    missing = [tool for tool in ("libvirtd", "virsh") if shutil.which(tool) is None]
    if missing:
        message = f"needs {', '.join(missing)} (apt-get install libvirt-daemon-system)"
        if os.environ.get("XVMD_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)
