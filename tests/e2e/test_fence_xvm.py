"""The stock fence_xvm client against xvmd, in a private network namespace.

The daemon serves libvirt's test driver loaded from fixtures/domains.xml (43 domains: running,
paused, shut off, names differing only in case). The driver keeps state inside the daemon's
connection, so what the client sees after an "off" is what the daemon really did.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.support.harness import DOMAINS_XML, ClientResult, Netns, Xvmd, fence_xvm, parse_list

pytestmark = pytest.mark.e2e

PORT = 20229


def fixture_domains() -> dict[str, tuple[str, int]]:
    """{name: (uuid, libvirt state)} from the fixture file."""
    ns = {"test": "http://libvirt.org/schemas/domain/test/1.0"}
    out = {}
    for dom in etree.parse(str(DOMAINS_XML)).getroot().findall("domain"):
        state = dom.findtext("test:runstate", default="1", namespaces=ns)
        out[dom.findtext("name")] = (dom.findtext("uuid"), int(state))
    return out


@pytest.fixture(scope="module")
def daemon(
    netns: Netns, key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Xvmd]:
    log = tmp_path_factory.mktemp("xvmd") / "xvmd.log"
    args = [
        "--local",
        "--no-ccs",
        "--control",
        str(log.with_name("xvmd.sock")),
        "--audit",
        str(log.with_name("audit.jsonl")),
        "-k",
        str(key_file),
        "-I",
        "lo",
        "-p",
        str(PORT),
        "-U",
        f"test://{DOMAINS_XML}",
    ]
    d = Xvmd(netns, args, log, port=PORT).start()
    yield d
    d.stop()


@pytest.fixture
def xvm(netns: Netns, key_file: Path, daemon: Xvmd) -> Iterator[object]:
    def call(*args: str) -> ClientResult:
        return fence_xvm(
            netns, "-a", "225.0.0.12", "-p", str(PORT), "-k", str(key_file), "-t", "5", *args
        )

    yield call


def test_list_shows_every_domain_in_libvirt_order_and_format(xvm, daemon: Xvmd) -> None:
    res = xvm("-o", "list")
    assert res.rc == 0, res.output
    expected = fixture_domains()
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    listed = parse_list(res.stdout)
    assert set(listed) == set(expected)
    for name, (uuid, state) in expected.items():
        want = "on" if state == 1 else "off"  # the client shows only state 1 as "on"
        assert listed[name] == (uuid, want), name
    # Sorted case-insensitively, formatted as "%-32s %s %s".
    names = [line.rsplit(None, 2)[0].rstrip() for line in lines]
    assert names == sorted(names, key=str.casefold)
    for line in lines:
        name, uuid, state = line.rsplit(None, 2)
        assert re.fullmatch(r"[0-9a-f-]{36}", uuid)
        if len(name.rstrip()) < 32:
            assert line.startswith(f"{name.rstrip():<32} {uuid} ")


def test_list_status_is_the_same_stream(xvm) -> None:
    res = xvm("-o", "list-status")
    assert res.rc == 0
    assert parse_list(res.stdout).keys() == fixture_domains().keys()


@pytest.mark.parametrize(
    ("target", "rc", "text"),
    [
        ("vm-01", 0, "Status: ON"),
        ("off-1", 2, "Status: OFF"),
        ("Paused-A", 0, "Status: ON"),  # paused still holds memory: not fenced
        ("nosuch", 2, "Status: OFF"),
        ("x" * 63, 0, "Status: ON"),
        ("guest.example.com", 0, "Status: ON"),
    ],
)
def test_status(xvm, target: str, rc: int, text: str) -> None:
    res = xvm("-o", "status", "-H", target)
    assert (res.rc, res.stdout.strip()) == (rc, text), res.output


def test_off_then_on_really_changes_the_domain(xvm) -> None:
    assert xvm("-o", "status", "-H", "vm-05").rc == 0
    off = xvm("-o", "off", "-H", "vm-05")
    assert off.rc == 0, off.output
    assert xvm("-o", "status", "-H", "vm-05").rc == 2
    assert parse_list(xvm("-o", "list").stdout)["vm-05"][1] == "off"
    assert xvm("-o", "off", "-H", "vm-05").rc == 0  # already off: still success
    on = xvm("-o", "on", "-H", "vm-05")
    assert on.rc == 0, on.output
    assert xvm("-o", "status", "-H", "vm-05").rc == 0


def test_reboot_running_domain_comes_back(xvm, daemon: Xvmd) -> None:
    res = xvm("-o", "reboot", "-H", "vm-06")
    assert res.rc == 0, res.output
    assert xvm("-o", "status", "-H", "vm-06").rc == 0
    assert daemon.wait_for_log("reboot 'vm-06' -> success")


def test_reboot_of_shut_off_domain_leaves_it_off(xvm) -> None:
    assert xvm("-o", "reboot", "-H", "off-2").rc == 0
    assert xvm("-o", "status", "-H", "off-2").rc == 2


def test_power_actions_on_unknown_domain_fail(xvm) -> None:
    for op in ("off", "on", "reboot"):
        res = xvm("-o", op, "-H", "nosuch")
        assert res.rc == 1, (op, res.output)
        assert "Operation failed" in res.output


def test_on_resumes_a_paused_domain(xvm) -> None:
    assert parse_list(xvm("-o", "list").stdout)["paused-b"][1] == "off"
    assert xvm("-o", "on", "-H", "paused-b").rc == 0
    assert parse_list(xvm("-o", "list").stdout)["paused-b"][1] == "on"


def test_monitor_checks_the_hypervisor(xvm, daemon: Xvmd) -> None:
    assert xvm("-o", "monitor").rc == 0
    assert daemon.wait_for_log("monitor - -> success")


def test_lookup_by_uuid_with_and_without_flag(xvm) -> None:
    uuid = fixture_domains()["vm-07"][0]
    assert xvm("-u", "-o", "status", "-H", uuid).rc == 0
    assert xvm("-o", "off", "-H", uuid.upper()).rc == 0
    assert xvm("-o", "status", "-H", "vm-07").rc == 2
    assert xvm("-o", "on", "-n", uuid).rc == 0
    assert xvm("-o", "status", "-H", "vm-07").rc == 0


def test_names_match_case_insensitively_only_when_unique(xvm) -> None:
    assert xvm("-o", "status", "-H", "webserver").rc == 0  # only WebServer
    ambiguous = xvm("-o", "status", "-H", "Db")  # db and DB both exist
    assert ambiguous.rc == 1, ambiguous.output
    assert xvm("-o", "off", "-H", "db").rc == 0  # exact name wins
    assert xvm("-o", "status", "-H", "db").rc == 2
    assert xvm("-o", "status", "-H", "DB").rc == 0


def test_every_request_is_logged_with_requester_op_target_result_and_time(
    xvm, daemon: Xvmd
) -> None:
    xvm("-o", "status", "-H", "vm-08")
    assert daemon.wait_for_log("status 'vm-08'")
    line = next(ln for ln in daemon.log().splitlines() if "status 'vm-08'" in ln)
    assert re.search(r"127\.0\.0\.1 status 'vm-08' -> success in \d+ ms: running$", line), line


def test_null_is_answered_with_failure_like_the_reference_daemons(xvm, daemon: Xvmd) -> None:
    res = xvm("-o", "null", "-H", "vm-01")
    assert res.rc == 1
    assert "Operation failed" in res.output
    assert daemon.wait_for_log("null 'vm-01' -> failed")
    assert xvm("-o", "status", "-H", "vm-01").rc == 0  # and nothing happened to it
