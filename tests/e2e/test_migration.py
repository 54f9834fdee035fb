"""A fence_virtd configuration, imported, gives an xvmd that the same clients talk to."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import DOMAINS_XML, Netns, Xvmd, fence_xvm
from xvmd.cli.fvconf import convert, parse

pytestmark = pytest.mark.e2e

FENCE_VIRTD = "/usr/sbin/fence_virtd"


def test_imported_config_serves_the_same_clients(
    netns: Netns, key_file: Path, tmp_path: Path
) -> None:
    if not Path(FENCE_VIRTD).exists():
        pytest.fail("fence_virtd is not installed (apt-get install fence-virtd)")
    port = 23229
    conf = tmp_path / "fence_virt.conf"
    conf.write_text(
        'fence_virtd { listener = "multicast"; backend = "libvirt"; '
        'module_path = "/usr/lib/x86_64-linux-gnu/fence-virt"; }\n'
        f'listeners {{ multicast {{ key_file = "{key_file}"; address = "225.0.0.12"; '
        f'interface = "lo"; port = "{port}"; family = "ipv4"; hash = "sha256"; '
        'auth = "sha256"; } }\n'
        f'backends {{ libvirt {{ uri = "test://{DOMAINS_XML}"; }} }}\n'
    )
    client = ["-p", str(port), "-k", str(key_file), "-t", "5"]

    def exercise() -> list[tuple[int, str]]:
        out = []
        for args in (
            ["-o", "status", "-H", "vm-20"],
            ["-o", "off", "-H", "vm-20"],
            ["-o", "status", "-H", "vm-20"],
            ["-o", "status", "-H", "nosuch"],
        ):
            res = fence_xvm(netns, *client, *args)
            out.append((res.rc, res.stdout.strip()))
        return out

    with open(tmp_path / "fence_virtd.log", "wb") as log:
        ref = subprocess.Popen(
            netns.cmd(
                "stdbuf",
                "-o0",
                "-e0",
                FENCE_VIRTD,
                "-F",
                "-d",
                "1",
                "-f",
                str(conf),
                "-p",
                str(tmp_path / "fv.pid"),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(50):  # fence_virtd needs ~0.1 s to listen
            if fence_xvm(netns, *client, "-o", "status", "-H", "vm-01").rc == 0:
                break
        reference = exercise()
    finally:
        ref.send_signal(signal.SIGTERM)
        ref.wait(15)

    migration = convert(parse(conf.read_text()))
    args = [
        *migration.options,
        "--control",
        str(tmp_path / "x.sock"),
        "--audit",
        str(tmp_path / "audit.jsonl"),
    ]
    d = Xvmd(netns, args, tmp_path / "xvmd.log", port=port).start()
    try:
        assert (
            exercise()
            == reference
            == [(0, "Status: ON"), (0, ""), (2, "Status: OFF"), (2, "Status: OFF")]
        )
    finally:
        d.stop()
