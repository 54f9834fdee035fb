"""The metrics endpoint (``--metrics``): the daemon's status in the Prometheus text format.

The only module that imports prometheus_client. Nothing is counted twice: every scrape reads
the same status document ``xvmd status`` shows, built on the event loop (so it is consistent)
and turned into metric families here, in the HTTP server's thread. Off by default; bound to
localhost unless an address is given.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

log = logging.getLogger("xvmd")

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9701
Status = Callable[[], Mapping[str, Any]]


def families(doc: Mapping[str, Any]) -> Iterator[Metric]:
    """The metric families of one status document (pure)."""
    yield from _requests(doc.get("counters") or {})
    yield _gauge("xvmd_up_info", "xvmd's version and mode (always 1)", 1,
                 {"version": str(doc.get("version")), "mode": str(doc.get("mode"))})  # fmt: skip
    yield _gauge("xvmd_active_sessions", "requests being served now", doc.get("active_sessions"))
    backend = doc.get("backend") or {}
    yield _gauge(
        "xvmd_backend_up", "the hypervisor answered the last check", backend.get("reachable")
    )
    quorum = doc.get("quorum")
    if quorum is not None:  # cluster mode
        yield _gauge(
            "xvmd_quorate", "this host's corosync partition is quorate", quorum.get("quorate")
        )
        members = quorum.get("members")
        yield _gauge("xvmd_quorum_members", "members of this host's corosync partition",
                     len(members) if isinstance(members, list) else None)  # fmt: skip
    hosts = doc.get("hosts")
    if isinstance(hosts, dict):
        yield _gauge("xvmd_group_members", "hosts in this guest cluster's host group",
                     len(hosts.get("members") or []))  # fmt: skip
    yield from _config(doc)
    audit = doc.get("audit")
    if isinstance(audit, dict):
        yield _counter("xvmd_audit_records", "audit records written", audit.get("written"))
        yield _counter("xvmd_audit_failures", "audit records that could not be written",
                       audit.get("failures"))  # fmt: skip


def _requests(counters: Mapping[str, Any]) -> Iterator[Metric]:
    answered = CounterMetricFamily(
        "xvmd_requests", "requests answered, by operation and result", labels=["op", "result"]
    )
    for op, results in sorted((counters.get("by_op") or {}).items()):
        for result, n in sorted(results.items()):
            answered.add_metric([op, result], n)
    yield answered
    dropped = CounterMetricFamily(
        "xvmd_dropped", "datagrams and requests dropped without an answer, by reason",
        labels=["reason"],
    )  # fmt: skip
    for reason, n in sorted((counters.get("dropped") or {}).items()):
        dropped.add_metric([str(reason)], n)
    yield dropped
    latency = counters.get("latency")
    if isinstance(latency, dict):
        hist = HistogramMetricFamily(
            "xvmd_request_duration_seconds", "time from admitting a request to its answer"
        )
        running, buckets = 0, []
        for bound, n in zip([*latency["bounds"], float("inf")], latency["counts"], strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        hist.add_metric([], buckets, latency["sum"])
        yield hist


def _config(doc: Mapping[str, Any]) -> Iterator[Metric]:
    config = doc.get("config")
    if isinstance(config, dict):
        cluster = {"cluster": str(config.get("cluster"))}
        version = config.get("config_version")
        yield _gauge(
            "xvmd_config_version", "version of the configuration in force", version, cluster
        )
    reload = doc.get("reload")
    if isinstance(reload, dict):
        yield _counter("xvmd_config_reloads", "configurations taken while running",
                       reload.get("reloads"))  # fmt: skip
        yield _counter("xvmd_config_reload_failures", "reloads rejected, timed out or failed",
                       reload.get("failures"))  # fmt: skip
        yield _gauge("xvmd_config_reload_problem", "1 while the last reload left a problem",
                     reload.get("last_problem") is not None)  # fmt: skip


def _gauge(name: str, doc: str, value: Any, labels: Mapping[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), float(value))
    return family


def _counter(name: str, doc: str, value: Any) -> Metric:
    family = CounterMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], float(value))
    return family


class _Collector:
    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        return families(self._status())


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is no news


SCRAPE_TIMEOUT = 2.0
"""Seconds a scrape waits for the event loop to build the status document."""


def on_loop(status: Callable[[], Mapping[str, Any]], loop: asyncio.AbstractEventLoop) -> Status:
    """``status`` called on ``loop`` (where the daemon's state lives) from another thread."""

    async def build() -> Mapping[str, Any]:
        return status()

    def fetch() -> Mapping[str, Any]:
        return asyncio.run_coroutine_threadsafe(build(), loop).result(SCRAPE_TIMEOUT)

    return fetch


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """The HTTP endpoint in a thread of its own; ``status`` is called from that thread."""

    def __init__(self, address: str, port: int, status: Status) -> None:
        registry = CollectorRegistry()
        registry.register(_Collector(status))
        server_class = _Server6 if ":" in address else WSGIServer
        self._server: WSGIServer = make_server(
            address, port, make_wsgi_app(registry), server_class, handler_class=_Quiet
        )
        self.port = self._server.server_port
        shown = f"[{address}]" if ":" in address else address
        self.url = f"http://{shown}:{self.port}/metrics"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(
    address: str,
    port: int,
    status: Callable[[], Mapping[str, Any]],
    loop: asyncio.AbstractEventLoop,
) -> MetricsServer:
    """The endpoint, serving; raises OSError when it cannot bind."""
    server = MetricsServer(address, port, on_loop(status, loop))
    server.start()
    return server
