"""With cluster.conf a node's VM is one exact domain: the stock fence_xvm never reaches another
tenant's VM whose name differs only in case, nor a domain merely named like a node VM's UUID.

The daemon serves libvirt's test driver loaded from fixtures/domains-case.xml (all running):
``Tenant-Web``; ``victim`` with UUID 00000002-…; a domain *named* 00000002-…; ``guest-1``.
Two devices, one key each: xvm-a holds n3 (VM ``tenant-web``, which does not exist) and n5
(VM 00000002-… without use_uuid); xvm-b holds n4 (VM ``Tenant-Web``) and n6 (VM 00000002-…
with use_uuid), so the other tenant's view can be queried through a path that is allowed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.support.harness import FIXTURES, ClientResult, Netns, Xvmd, fence_xvm, parse_list

pytestmark = pytest.mark.e2e

CASE_XML = FIXTURES / "domains-case.xml"
U2 = "00000002-0000-4000-8000-5eed00000002"

CONF = """<?xml version="1.0"?>
<cluster name="tenants" config_version="1">
  <clusternodes>
    <clusternode name="n1" nodeid="1"><altname name="127.0.0.1"/>
      <fence><method name="1"><device name="xvm-a" port="guest-1"/></method></fence>
    </clusternode>
    <clusternode name="n3" nodeid="3">
      <fence><method name="1"><device name="xvm-a" port="tenant-web"/></method></fence>
    </clusternode>
    <clusternode name="n4" nodeid="4">
      <fence><method name="1"><device name="xvm-b" port="Tenant-Web"/></method></fence>
    </clusternode>
    <clusternode name="n5" nodeid="5">
      <fence><method name="1"><device name="xvm-a" port="{u2}"/></method></fence>
    </clusternode>
    <clusternode name="n6" nodeid="6">
      <fence><method name="1"><device name="xvm-b" port="{u2}" use_uuid="1"/></method></fence>
    </clusternode>
  </clusternodes>
  <fencedevices>
    <fencedevice name="xvm-a" agent="fence_xvm" key_file="a.key"/>
    <fencedevice name="xvm-b" agent="fence_xvm" key_file="b.key"/>
  </fencedevices>
</cluster>
"""


class Tenants:
    """cluster.conf and the two devices' keys (mode 0600) in a scratch directory."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "cluster.conf"
        self.conf.write_text(CONF.format(u2=U2))
        self.a, self.b = root / "a.key", root / "b.key"
        for key, source in ((self.a, "host1.key"), (self.b, "host2.key")):
            shutil.copy(FIXTURES / "keys" / source, key)
            key.chmod(0o600)


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    return Tenants(tmp_path / "etc")


@pytest.fixture
def daemon(start_xvmd: XvmdFactory, tenants: Tenants) -> Xvmd:
    d = start_xvmd("-f", str(tenants.conf), no_ccs=False, uri=f"test://{CASE_XML}")
    assert "serving device xvm-a" in d.log() and "serving device xvm-b" in d.log(), d.log()
    return d


def xvm(netns: Netns, d: Xvmd, key: Path, *args: str) -> ClientResult:
    return fence_xvm(netns, "-p", str(d.port), "-k", str(key), "-t", "5", *args)


def listed(netns: Netns, d: Xvmd, key: Path) -> dict[str, str]:
    """{name: on|off} of the domains ``key``'s device may see."""
    res = xvm(netns, d, key, "-o", "list")
    assert res.rc == 0, res.output + d.log()
    return {name: state for name, (_uuid, state) in parse_list(res.stdout).items()}


def test_a_node_vm_never_matches_another_tenants_vm_by_case(
    netns: Netns, daemon: Xvmd, tenants: Tenants
) -> None:
    off = xvm(netns, daemon, tenants.a, "-o", "off", "-H", "n3")
    assert off.rc == 1, off.output + daemon.log()
    assert daemon.wait_for_log("off 'n3' (domain tenant-web) -> failed")
    assert xvm(netns, daemon, tenants.a, "-o", "status", "-H", "n3").rc == 2  # absent: off
    # Naming the other tenant's VM directly is no way round: it is not xvm-a's VM.
    assert xvm(netns, daemon, tenants.a, "-o", "off", "-H", "Tenant-Web").rc == 3
    assert "Tenant-Web" not in listed(netns, daemon, tenants.a)
    # The other tenant's VM is still running, as its own device sees it.
    assert xvm(netns, daemon, tenants.b, "-o", "status", "-H", "n4").rc == 0
    assert listed(netns, daemon, tenants.b)["Tenant-Web"] == "on"


def test_a_vm_named_like_another_domains_uuid_is_ambiguous(
    netns: Netns, daemon: Xvmd, tenants: Tenants
) -> None:
    for op in ("off", "status"):
        res = xvm(netns, daemon, tenants.a, "-o", op, "-H", "n5")
        assert res.rc == 1, (op, res.output, daemon.log())
    assert daemon.wait_for_log(
        f"VM '{U2}' is ambiguous: the name of domain {U2} and the UUID of domain victim"
    )
    assert xvm(netns, daemon, tenants.a, "-o", "off", "-H", U2).rc == 1  # same VM, same answer
    assert listed(netns, daemon, tenants.a) == {"guest-1": "on", "victim": "on", U2: "on"}


def test_use_uuid_reaches_the_domain_with_that_uuid(
    netns: Netns, daemon: Xvmd, tenants: Tenants
) -> None:
    assert listed(netns, daemon, tenants.b) == {"Tenant-Web": "on", "victim": "on"}
    res = xvm(netns, daemon, tenants.b, "-o", "off", "-H", "n6")
    assert res.rc == 0, res.output + daemon.log()
    assert daemon.wait_for_log("off 'n6' (domain victim) -> success")
    assert listed(netns, daemon, tenants.a) == {"guest-1": "on", "victim": "off", U2: "on"}


def test_without_cluster_conf_a_unique_case_insensitive_match_still_works(
    netns: Netns, start_xvmd: XvmdFactory, key_file: Path
) -> None:
    d = start_xvmd(uri=f"test://{CASE_XML}")
    assert xvm(netns, d, key_file, "-o", "status", "-H", "tenant-web").rc == 0
    off = xvm(netns, d, key_file, "-o", "off", "-H", "tenant-web")
    assert off.rc == 0, off.output + d.log()
    assert d.wait_for_log("off 'tenant-web' (domain Tenant-Web) -> success")
    assert listed(netns, d, key_file) == {
        "guest-1": "on",
        "Tenant-Web": "off",
        "victim": "on",
        U2: "on",
        "c0000005-0000-4000-8000-5eed00000005": "on",
    }
