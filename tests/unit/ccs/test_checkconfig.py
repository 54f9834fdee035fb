"""``xvmd check-config``: human and JSON output, exit codes, and the real console entry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ccs import Code
from tests.unit.ccs.cases import CASES, REPO, Case, case_path, line_of, load_args
from xvmd.cli import check_config

ISSUE_LINE = re.compile(
    r"^(?P<file>.+):(?P<line>\d+): (?P<sev>error|warning) (?P<code>[a-z-]+): .+$"
)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = check_config.main(list(argv))
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out = _run(capsys, "--json", *argv)
    data = json.loads(out)
    assert isinstance(data, dict)
    return code, data


def _issue_lines(out: str) -> list[re.Match[str]]:
    return [m for m in map(ISSUE_LINE.match, out.splitlines()) if m]


# --- human output ----------------------------------------------------------------------------


def test_valid_file_prints_plan_and_verdict(
    staged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = staged / "ccs" / "two-host.conf"
    keys = staged / "keys"
    code, out = _run(capsys, "-f", str(path))
    assert code == 0
    assert out == (
        "\n"
        f"cluster.conf {path}: cluster 'guests', config_version 7; 4 nodes\n"
        "this host serves:\n"
        f"  device xvm-host1 (fence_xvm), key {keys / 'host1.key'} (4096 bytes)\n"
        "    node1 -> domain vm-01\n"
        "    node2 -> domain vm-02  (also answers to node2-ring1)\n"
        f"  device xvm-host2 (fence_xvm), key {keys / 'host2.key'} (4096 bytes)\n"
        "    node3 -> domain vm-03\n"
        "    node4 -> domain vm-04\n"
        "\n"
        f"{path}: valid (0 warnings)\n"
    )


def test_errors_are_listed_in_compiler_form_with_the_plan(
    staged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = staged / "ccs" / "invalid-several.conf"
    code, out = _run(capsys, "-f", str(path))
    assert code == 1
    found = _issue_lines(out)
    assert [(m["file"], int(m["line"]), m["sev"], m["code"]) for m in found] == [
        (str(path), line_of(path, "<cluster "), "warning", "cluster-name-long"),
        (str(path), line_of(path, "<cman "), "error", "two-node-votes"),
        (str(path), line_of(path, 'domain="vm-other"'), "error", "conflicting-domain"),
        (str(path), line_of(path, '<clusternode name="n2"'), "error", "duplicate-nodeid"),
        (str(path), line_of(path, '"xvm-host3"'), "error", "undefined-device"),
        (str(path), line_of(path, 'hash="md5"'), "error", "bad-hash"),
        (str(path), line_of(path, "empty.key"), "warning", "unused-device"),
        (str(path), line_of(path, "empty.key"), "error", "key-empty"),
    ]
    lines = out.splitlines()
    assert lines[: len(found)] == [m.group(0) for m in found]  # issues come first
    assert "    n1 -> domain vm-other" in lines  # domain= wins over port= (an error anyway)
    empty_key = staged / "keys" / "empty.key"
    assert f"  not served here: device xvm-host2: key file {empty_key}: empty" in lines
    assert lines[-1] == f"{path}: INVALID: 6 errors, 2 warnings"


def test_warnings_only_is_valid(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = staged / "ccs" / "old-generation.conf"
    code, out = _run(capsys, "-f", str(path))
    assert code == 0
    lines = out.splitlines()
    line = line_of(path, '<device name="xvm" port="1229"/>')
    assert lines[0].startswith(f"{path}:{line}: warning old-port: node 'old3': ")
    assert [s for s in lines if "->" in s] == [
        "    old1 -> domain vm-old1",
        "    old2 -> domain vm-old2",
        "    old3 -> domain old3",
    ]
    assert lines[-1] == f"{path}: valid (1 warning)"


def test_uuid_targets_are_shown_as_uuids(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "-f", str(staged / "ccs" / "uuid.conf"))
    assert code == 0
    assert "    u1 -> uuid 6f2c0b1e-3d4a-4c5b-9e8f-0a1b2c3d4e5f\n" in out
    assert "    u2 -> uuid 0d9e8f7a-6b5c-4d3e-8f1a-2b3c4d5e6f70\n" in out
    assert "(fence_virt)" in out


def test_device_without_nodes_is_pointed_out(
    staged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "-f", str(staged / "ccs" / "warn-unused-device.conf"))
    assert code == 0
    lines = out.splitlines()
    at = next(n for n, s in enumerate(lines) if s.startswith("  device xvm-host2 "))
    assert lines[at + 1] == "    (no cluster node is fenced through this device)"


def test_not_served_devices_are_listed(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "-f", str(staged / "ccs" / "qdisk.conf"))
    assert code == 0
    absent = staged / "keys" / "not-on-this-host.key"
    assert (
        out.splitlines()[-3] == f"  not served here: device xvm-host2: key file {absent}: missing"
    )


def test_device_option_selects_devices(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(staged / "ccs" / "sixteen-nodes.conf")
    code, out = _run(capsys, "-f", path, "-D", "xvm-host3", "--device", "xvm-host1")
    assert code == 0
    assert re.findall(r"^  device (\S+)", out, re.M) == ["xvm-host3", "xvm-host1"]
    assert re.findall(r"^    (node\d+) ->", out, re.M) == [
        *(f"node{n:02d}" for n in range(9, 13)),
        *(f"node{n:02d}" for n in range(1, 5)),
    ]


def test_device_option_overrides_fence_xvmd(
    staged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(staged / "ccs" / "fence-xvmd-settings.conf")
    _, out = _run(capsys, "-f", path)
    assert re.findall(r"^  device (\S+)", out, re.M) == ["xvm-host1"]
    _, out = _run(capsys, "-f", path, "-D", "xvm-host2")
    assert re.findall(r"^  device (\S+)", out, re.M) == ["xvm-host2"]
    assert "    web2 -> domain web2-vm\n" in out


@pytest.mark.parametrize(
    ("device", "code", "line"),
    [("xvm-nope", "unknown-device", "0"), ("scsi-fence", "unknown-agent", None)],
)
def test_device_option_with_a_bad_name(
    staged: Path, capsys: pytest.CaptureFixture[str], device: str, code: str, line: str | None
) -> None:
    path = staged / "ccs" / "qdisk.conf"
    rc, out = _run(capsys, "-f", str(path), "-D", "xvm-host1", "-D", device)
    assert rc == 1
    (found,) = _issue_lines(out)
    assert found["code"] == code and found["sev"] == "error"
    assert found["line"] == (line or str(line_of(path, 'name="scsi-fence" agent')))
    assert f"'{device}'" in found.group(0)
    assert out.splitlines()[-1] == f"{path}: INVALID: 1 error, 0 warnings"


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cluster.conf"
    code, out = _run(capsys, "-f", str(path))
    assert code == 2
    assert out == (
        f"{path}:0: error config-unreadable: {path}: no such file\n"
        f"\n{path}: cannot check: {path}: no such file\n"
    )


def test_unparsable_file_has_no_plan(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = staged / "ccs" / "invalid-xml-syntax.conf"
    code, out = _run(capsys, "-f", str(path))
    assert code == 1
    (found,) = _issue_lines(out)
    assert (found["code"], found["line"]) == ("xml-syntax", str(line_of(path, "</clusternod>")))
    assert "cluster '" not in out and "this host serves" not in out
    assert out.splitlines()[-1] == f"{path}: INVALID: 1 error, 0 warnings"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_exit_code_per_fixture(
    case: Case, staged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, corosync = load_args(case, case_path(case, staged, tmp_path), staged)
    extra = ("--corosync-conf", corosync) if corosync else ()
    code, out = _run(capsys, "-f", str(path), *extra)
    not_read = case.code in (Code.CONFIG_UNREADABLE, Code.CONFIG_TOO_LARGE)
    expected = 2 if not_read else 0 if (case.fixture or "").startswith("warn-") else 1
    assert code == expected
    assert str(case.code) in {m["code"] for m in _issue_lines(out)}
    verdict = out.splitlines()[-1]
    assert verdict.startswith(
        {0: f"{path}: valid (1 warning)", 1: f"{path}: INVALID: 1 error", 2: f"{path}: cannot"}[
            code
        ]
    )


# --- JSON ------------------------------------------------------------------------------------


def test_json_for_a_valid_file(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = staged / "ccs" / "qdisk.conf"
    code, data = _json(capsys, "-f", str(path))
    assert code == 0
    keys = staged / "keys"
    assert data == {
        "file": str(path),
        "readable": True,
        "valid": True,
        "errors": 0,
        "warnings": 0,
        "issues": [],
        "cluster": {
            "name": "qcluster",
            "config_version": 118,
            "source": "cluster.conf",
            "files": [str(path)],
            "nodes": 3,
            "two_node": False,
            "expected_votes": 5,
        },
        "served": [
            {
                "device": "xvm-host1",
                "agent": "fence_xvm",
                "key_file": str(keys / "host1.key"),
                "key_bytes": 4096,
                "nodes": [
                    {
                        "node": "qn1",
                        "nodeid": 1,
                        "names": ["qn1"],
                        "domain": "rhel6-qn1",
                        "use_uuid": False,
                    },
                    {
                        "node": "qn2",
                        "nodeid": 2,
                        "names": ["qn2"],
                        "domain": "rhel6-qn2",
                        "use_uuid": False,
                    },
                ],
            }
        ],
        "not_served": [
            {
                "device": "xvm-host2",
                "reason": f"key file {keys / 'not-on-this-host.key'}: missing",
            }
        ],
    }


def test_json_for_an_invalid_file(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = staged / "ccs" / "invalid-several.conf"
    code, data = _json(capsys, "-f", str(path))
    assert code == 1
    assert (data["valid"], data["readable"], data["errors"], data["warnings"]) == (
        False,
        True,
        6,
        2,
    )
    issues = data["issues"]
    assert len(issues) == 8
    assert all(set(i) == {"file", "line", "severity", "code", "message"} for i in issues)
    assert issues[0] == {
        "file": str(path),
        "line": line_of(path, "<cluster "),
        "severity": "warning",
        "code": "cluster-name-long",
        "message": "cluster name 'production-guests-east1' has 23 characters",
    }
    assert {i["code"] for i in issues if i["severity"] == "error"} == {
        "two-node-votes",
        "conflicting-domain",
        "duplicate-nodeid",
        "undefined-device",
        "bad-hash",
        "key-empty",
    }
    assert [s["device"] for s in data["served"]] == ["xvm-host1"]
    assert [n["device"] for n in data["not_served"]] == ["xvm-host2"]
    assert data["cluster"]["two_node"] is True


def test_json_with_warnings_and_altnames(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _json(capsys, "-f", str(staged / "ccs" / "altnames.conf"))
    assert code == 0 and data["valid"] is True
    (served,) = data["served"]
    assert [n["names"] for n in served["nodes"]] == [
        ["ring-a", "ring-a-r1"],
        ["ring-b", "ring-b-r1", "ring-b-storage"],
        ["ring-c"],
    ]
    assert [n["domain"] for n in served["nodes"]] == ["vm-ring-a", "vm-ring-b", "ring-c"]

    code, data = _json(capsys, "-f", str(staged / "ccs" / "warn-key-too-long.conf"))
    assert code == 0
    assert (data["valid"], data["errors"], data["warnings"]) == (True, 0, 1)
    assert data["issues"][0]["code"] == "key-too-long"
    assert data["served"][0]["key_bytes"] == 4096


def test_json_for_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.conf"
    code, data = _json(capsys, "-f", str(path))
    assert code == 2
    assert data == {
        "file": str(path),
        "readable": False,
        "valid": False,
        "errors": 1,
        "warnings": 0,
        "issues": [
            {
                "file": str(path),
                "line": 0,
                "severity": "error",
                "code": "config-unreadable",
                "message": f"{path}: no such file",
            }
        ],
    }


def test_json_for_an_unparsable_file(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _json(capsys, "-f", str(staged / "ccs" / "invalid-not-cluster.conf"))
    assert code == 1
    assert (data["readable"], data["valid"]) == (True, False)
    assert [i["code"] for i in data["issues"]] == ["not-cluster"]
    assert "cluster" not in data and "served" not in data and "not_served" not in data


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        check_config.main(["--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_unicode_digit_port_is_reported(
    staged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (staged / "ccs" / "invalid-bad-port.conf").read_text().replace("70000", "²")
    text = text.replace("../keys/", f"{staged / 'keys'}/")
    path = tmp_path / "cluster.conf"
    path.write_text(text)
    code, out = _run(capsys, "-f", str(path))
    assert code == 1
    assert [m["code"] for m in _issue_lines(out)] == [str(Code.BAD_PORT)]


# --- the real entry points -------------------------------------------------------------------


def _subprocess(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def test_python_dash_m_xvmd_check_config(staged: Path) -> None:
    path = staged / "ccs" / "two-node.conf"
    proc = _subprocess(
        [sys.executable, "-m", "xvmd", "check-config", "--no-resolve", "-f", str(path)]
    )
    assert proc.returncode == 0, proc.stderr
    assert "    pair-a.example.com -> domain pair-a\n" in proc.stdout
    assert proc.stdout.endswith(f"{path}: valid (0 warnings)\n")

    bad = staged / "ccs" / "invalid-duplicate-nodeid.conf"
    proc = _subprocess(
        [sys.executable, "-m", "xvmd", "check-config", "--no-resolve", "-f", str(bad), "--json"]
    )
    assert proc.returncode == 1
    assert [i["code"] for i in json.loads(proc.stdout)["issues"]] == ["duplicate-nodeid"]


def test_installed_console_script(staged: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "xvmd"
    if not script.exists():
        found = shutil.which("xvmd")
        if found is None:
            pytest.skip("the xvmd console script is not installed")
        script = Path(found)
    proc = _subprocess(
        [str(script), "check-config", "--no-resolve", "-f", str(tmp_path / "none.conf")]
    )
    assert proc.returncode == 2
    assert "config-unreadable" in proc.stdout
    proc = _subprocess(
        [str(script), "check-config", "--no-resolve", "-f", str(staged / "ccs" / "uuid.conf")]
    )
    assert proc.returncode == 0, proc.stderr
    assert "-> uuid " in proc.stdout
