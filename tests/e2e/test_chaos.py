"""A short seeded chaos run (tests/support/chaos.py) with the real daemons: three hosts with
corosync, a private libvirtd and xvmd each, the stock fence_xvm in a guest namespace, hosts
killed, cut off, healed, restarted and confirmed down, VMs moved, started and stopped between
requests. No answer may break the safety rule, and the run must have gone through the paths
that matter, so it cannot silently become trivial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.chaos import run, summary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.libvirtd,
    pytest.mark.usefixtures("corosync_installed", "libvirtd_installed"),
]

SEED = 3
DURATION = 75.0


def test_random_faults_never_break_the_safety_rule(tmp_path: Path) -> None:
    lines: list[str] = []
    doc = run(SEED, DURATION, tmp_path, say=lines.append)
    (tmp_path / "chaos-report.json").write_text(json.dumps(doc, indent=1) + "\n")  # evidence
    text = summary(doc)
    print(text)  # shown with -s, or -rP
    evidence = "\n".join(
        f"--- {host}\n{log}" for v in doc["violations"] for host, log in v["logs"].items()
    )
    assert doc["violations"] == [], f"{text}\n\n" + "\n".join(lines) + f"\n\n{evidence}"

    events = doc["events"]
    for kind in ("kill", "cut", "confirm-accepted", "move"):
        assert events.get(kind, 0) >= 1, f"no {kind} in the run\n{text}"
    assert doc["requests"].get("off", {}).get("success", 0) >= 1, text
    assert doc["python_requests"] >= 5, text  # connect-backs counted
    assert doc["requests_total"] >= 40, text
