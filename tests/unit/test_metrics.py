"""The metrics endpoint: the status document in the Prometheus text format, scraped over HTTP
from a running daemon and read back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.fakes import NotifySocket, ask, serving
from tests.unit.test_daemon import KEY, local_daemon
from xvmd.daemon.metrics import families
from xvmd.protocol.drops import DropReason
from xvmd.protocol.wire import Op, Result

DOC: dict[str, Any] = {
    "version": "0.1.0",
    "mode": "cluster",
    "active_sessions": 2,
    "backend": {"description": "libvirt qemu:///system", "reachable": True},
    "quorum": {"quorate": False, "members": [1, 2], "reason": "partition of 2 of 5"},
    "hosts": {"members": [{"node": 1}, {"node": 2}, {"node": 3}]},
    "config": {"cluster": "guests", "config_version": 12},
    "reload": {"reloads": 3, "failures": 1, "last_problem": "new configuration rejected"},
    "audit": {"written": 40, "failures": 0},
    "counters": {
        "answered": {"success": 3, "off": 1},
        "dropped": {"bad-signature": 7, "duplicate": 2},
        "by_op": {"status": {"success": 2, "off": 1}, "reboot": {"success": 1}},
        "latency": {"bounds": [0.01, 0.1, 1.0], "counts": [2, 1, 0, 1], "sum": 3.5},
    },
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class _Doc:
    def collect(self) -> Any:
        return families(DOC)


def test_the_status_document_as_metrics() -> None:
    registry = CollectorRegistry()
    registry.register(_Doc())  # type: ignore[arg-type]
    got = samples(generate_latest(registry).decode())
    assert got[("xvmd_requests_total", (("op", "status"), ("result", "off")))] == 1
    assert got[("xvmd_requests_total", (("op", "reboot"), ("result", "success")))] == 1
    assert got[("xvmd_dropped_total", (("reason", "bad-signature"),))] == 7
    buckets = {dict(k[1])["le"]: v for k, v in got.items()
               if k[0] == "xvmd_request_duration_seconds_bucket"}  # fmt: skip
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 3, "+Inf": 4}  # cumulative, as Prometheus wants
    assert got[("xvmd_request_duration_seconds_count", ())] == 4
    assert got[("xvmd_request_duration_seconds_sum", ())] == 3.5
    assert got[("xvmd_quorate", ())] == 0 and got[("xvmd_quorum_members", ())] == 2
    assert got[("xvmd_group_members", ())] == 3
    assert got[("xvmd_config_version", (("cluster", "guests"),))] == 12
    assert got[("xvmd_config_reload_failures_total", ())] == 1
    assert got[("xvmd_config_reload_problem", ())] == 1
    assert got[("xvmd_audit_failures_total", ())] == 0
    assert got[("xvmd_backend_up", ())] == 1 and got[("xvmd_active_sessions", ())] == 2


def test_local_mode_has_no_quorum_metrics() -> None:
    doc = {**DOC, "mode": "local", "quorum": None, "hosts": None}
    names = {f.name for f in families(doc)}
    assert "xvmd_quorate" not in names and "xvmd_group_members" not in names
    assert {"xvmd_requests", "xvmd_backend_up"} <= names


def test_a_running_daemon_is_scraped(tmp_path: Path, notify: NotifySocket) -> None:
    daemon = local_daemon(tmp_path, metrics=("127.0.0.1", 0))

    def scrape() -> str:
        assert daemon.metrics_url is not None
        with urllib.request.urlopen(daemon.metrics_url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            return str(resp.read().decode())

    async def scenario() -> tuple[str, str]:
        async with serving(daemon, notify) as dest:
            before = await asyncio.to_thread(scrape)
            reply = await ask(dest, Op.STATUS, "vm", KEY)
            assert reply.result == Result.SUCCESS
            after = await asyncio.to_thread(scrape)
        return before, after

    before, after = asyncio.run(scenario())
    assert ("xvmd_requests_total", (("op", "status"), ("result", "success"))) not in samples(before)
    got = samples(after)
    assert got[("xvmd_requests_total", (("op", "status"), ("result", "success")))] == 1
    assert got[("xvmd_request_duration_seconds_count", ())] == 1
    assert got[("xvmd_up_info", (("mode", "local"), ("version", daemon.status()["version"])))] == 1


def test_the_example_alert_rules_use_metrics_xvmd_exports() -> None:
    """contrib/prometheus/xvmd-alerts.yml stays true: every xvmd_* series it names exists."""
    from tests.support.harness import REPO

    rules = (REPO / "contrib" / "prometheus" / "xvmd-alerts.yml").read_text()
    registry = CollectorRegistry()
    registry.register(_Doc())  # type: ignore[arg-type]
    exported = {name for name, _ in samples(generate_latest(registry).decode())}
    named = set(re.findall(r"\bxvmd_[a-z_]+", rules))
    assert named and named <= exported, named - exported
    for label, values in (("result", Result), ("op", Op)):
        for value in re.findall(rf'{label}=~?"([^"]+)"', rules):
            assert set(value.split("|")) <= {v.label for v in values}, value
    for value in re.findall(r'reason=~?"([^"]+)"', rules):
        assert set(value.split("|")) <= {str(r) for r in DropReason}, value
