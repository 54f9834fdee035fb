"""Signatures, challenge-response, IPv6 and the TCP listener, with the stock clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory, make_key
from tests.support.harness import FENCE_VIRT, Netns, fence_xvm

pytestmark = pytest.mark.e2e

HASHES = ["none", "sha1", "sha256", "sha512"]


@pytest.mark.parametrize("auth", HASHES)
@pytest.mark.parametrize("hash_", HASHES)
def test_every_hash_and_auth_combination(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, hash_: str, auth: str
) -> None:
    d = start_xvmd("--hash", hash_, "--auth", auth)
    res = fence_xvm(
        netns,
        "-p",
        str(d.port),
        "-k",
        str(key_file),
        "-t",
        "5",
        "-c",
        hash_,
        "-C",
        auth,
        "-o",
        "status",
        "-H",
        "vm-01",
    )
    assert (res.rc, res.stdout.strip()) == (0, "Status: ON"), res.output + d.log()


def test_stronger_hash_than_the_minimum_is_accepted(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd("--hash", "sha256")
    res = fence_xvm(
        netns,
        "-p",
        str(d.port),
        "-k",
        str(key_file),
        "-t",
        "5",
        "-c",
        "sha512",
        "-o",
        "status",
        "-H",
        "vm-01",
    )
    assert res.rc == 0, res.output


def test_weaker_hash_is_dropped_and_counted(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd("--hash", "sha256")
    res = fence_xvm(
        netns,
        "-p",
        str(d.port),
        "-k",
        str(key_file),
        "-t",
        "2",
        "-r",
        "10",
        "-c",
        "sha1",
        "-o",
        "off",
        "-H",
        "vm-02",
    )
    assert res.rc == 1
    assert "Timed out waiting for response" in res.output
    d.stop()
    assert "weak-hash 2" in d.log()  # -t 2 -r 10: two attempts, each dropped
    assert "off 'vm-02'" not in d.log()


def test_wrong_key_is_dropped_without_callback(
    start_xvmd: XvmdFactory, netns: Netns, tmp_path: Path
) -> None:
    d = start_xvmd()
    other = make_key(tmp_path / "other.key")
    res = fence_xvm(
        netns,
        "-p",
        str(d.port),
        "-k",
        str(other),
        "-t",
        "2",
        "-r",
        "10",
        "-o",
        "off",
        "-H",
        "vm-03",
    )
    assert res.rc == 1
    assert "Timed out waiting for response" in res.output
    d.stop()
    assert "bad-signature 2" in d.log()


def test_auth_mismatch_fails_the_session_and_is_logged(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd("--auth", "sha512")
    res = fence_xvm(
        netns,
        "-p",
        str(d.port),
        "-k",
        str(key_file),
        "-t",
        "3",
        "-C",
        "sha256",
        "-o",
        "off",
        "-H",
        "vm-04",
    )
    assert res.rc != 0
    assert d.wait_for_log("authentication failed")
    status = fence_xvm(
        netns,
        "-p",
        str(d.port),
        "-k",
        str(key_file),
        "-t",
        "5",
        "-C",
        "sha512",
        "-o",
        "status",
        "-H",
        "vm-04",
    )
    assert status.rc == 0, "the failed session must not have powered vm-04 off"


def test_short_key_file_works_as_raw_bytes(
    start_xvmd: XvmdFactory, netns: Netns, tmp_path: Path
) -> None:
    key = tmp_path / "short.key"
    key.write_bytes(b"test-key-0123456789abcdefXYZ\n")  # trailing newline is part of the key
    key.chmod(0o600)
    d = start_xvmd(key=key)
    res = fence_xvm(
        netns, "-p", str(d.port), "-k", str(key), "-t", "5", "-o", "status", "-H", "vm-01"
    )
    assert res.rc == 0, res.output


def test_ipv6_multicast(start_xvmd: XvmdFactory, key_file: Path, tmp_path: Path) -> None:
    ns = Netns()
    try:
        iface = ns.add_ipv6_link()
        d = start_xvmd("-i", "ipv6", ns=ns, interface=iface)
        assert "ff05::3:1" in d.log()
        res = fence_xvm(
            ns,
            "-i",
            "ipv6",
            "-p",
            str(d.port),
            "-k",
            str(key_file),
            "-t",
            "5",
            "-o",
            "off",
            "-H",
            "vm-09",
        )
        assert res.rc == 0, res.output + d.log()
        res = fence_xvm(
            ns,
            "-a",
            "ff05::3:1",
            "-p",
            str(d.port),
            "-k",
            str(key_file),
            "-t",
            "5",
            "-o",
            "status",
            "-H",
            "vm-09",
        )
        assert res.rc == 2, res.output
        assert d.wait_for_log("fd00::1 off 'vm-09' -> success")
        d.stop()
    finally:
        ns.close()


def test_auto_family_serves_both_default_groups(start_xvmd: XvmdFactory, key_file: Path) -> None:
    ns = Netns()
    try:
        iface = ns.add_ipv6_link()
        d = start_xvmd(ns=ns, interface=iface)
        v6 = fence_xvm(
            ns,
            "-i",
            "ipv6",
            "-p",
            str(d.port),
            "-k",
            str(key_file),
            "-t",
            "5",
            "-o",
            "status",
            "-H",
            "vm-01",
        )
        assert v6.rc == 0, v6.output + d.log()
        d.stop()
    finally:
        ns.close()


def test_tcp_listener_serves_fence_virt(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd("--tcp")
    assert f"TCP 127.0.0.1 port {d.port}" in d.log()
    common = ["-T", "127.0.0.1", "-p", str(d.port), "-k", str(key_file), "-t", "5"]
    res = fence_xvm(netns, *common, "-o", "status", "-H", "vm-10", program=FENCE_VIRT)
    assert (res.rc, res.stdout.strip()) == (0, "Status: ON"), res.output + d.log()
    res = fence_xvm(netns, *common, "-o", "off", "-H", "vm-10", program=FENCE_VIRT)
    assert res.rc == 0
    res = fence_xvm(netns, *common, "-o", "status", "-H", "vm-10", program=FENCE_VIRT)
    assert res.rc == 2
    res = fence_xvm(netns, *common, "-o", "list", program=FENCE_VIRT)
    assert res.rc == 0 and "vm-10" in res.stdout


def test_tcp_listener_on_explicit_address_and_port(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path, port: int
) -> None:
    d = start_xvmd("--tcp", f"[::1]:{port}")
    res = fence_xvm(
        netns,
        "-T",
        "::1",
        "-p",
        str(port),
        "-k",
        str(key_file),
        "-t",
        "5",
        "-o",
        "status",
        "-H",
        "vm-01",
        program=FENCE_VIRT,
    )
    assert res.rc == 0, res.output + d.log()


def _veth(ns: Netns, address: str) -> None:
    ns.ip("link", "add", "xv0", "type", "veth", "peer", "name", "xv1")
    ns.ip("addr", "add", address, "dev", "xv0")
    ns.ip("link", "set", "xv0", "up")
    ns.ip("link", "set", "xv1", "up")


def test_group_is_rejoined_when_the_interface_is_recreated(
    start_xvmd: XvmdFactory, key_file: Path
) -> None:
    ns = Netns()
    try:
        _veth(ns, "10.99.0.1/24")  # inside the test namespace only
        d = start_xvmd("-i", "ipv4", ns=ns, interface="xv0")
        common = ["-p", str(d.port), "-k", str(key_file), "-t", "5"]
        assert fence_xvm(ns, *common, "-o", "status", "-H", "vm-01").rc == 0
        # down and up: the same interface comes back
        ns.ip("link", "set", "xv0", "down")
        assert d.wait_for_log("interface xv0 down")
        ns.ip("link", "set", "xv0", "up")
        assert fence_xvm(ns, *common, "-o", "status", "-H", "vm-01").rc == 0
        # deleted and re-created (a libvirt network restart does this): a new ifindex
        ns.ip("link", "del", "xv0")
        assert d.wait_for_log("interface xv0 removed")
        _veth(ns, "10.99.0.1/24")
        assert d.wait_for_log("rejoined multicast group 225.0.0.12 on xv0")
        res = fence_xvm(ns, *common, "-o", "status", "-H", "vm-01")
        assert res.rc == 0, res.output + d.log()
        assert d.proc is not None and d.proc.poll() is None
    finally:
        ns.close()
