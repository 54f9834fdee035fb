"""The composition root: builds the listeners, backend and service, runs until told to stop.

Nothing else in xvmd opens sockets at start-up or installs signal handlers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ccs.load import Snapshot
from xvmd import __version__
from xvmd.backend import Backend
from xvmd.core.domcache import DomainCache
from xvmd.core.executor import BackendRunner
from xvmd.core.limits import Limits
from xvmd.core.operations import Clock
from xvmd.core.policy import Policy
from xvmd.core.service import FenceService, Hashes
from xvmd.daemon import commands, control, statusdoc, systemd
from xvmd.daemon.audit import AuditError, AuditLog, restore_replay_memory
from xvmd.daemon.keys import KeyFileError, load_key
from xvmd.daemon.settings import ListenAddress, Settings
from xvmd.daemon.shutdown import CLOSE_TIMEOUT, close_within
from xvmd.daemon.sockets import StartupError, bind_error, open_sockets
from xvmd.net import tcp, udp
from xvmd.net.iface import LinkEvent, LinkFollower, follow_links
from xvmd.quorum import QuorumSource

if TYPE_CHECKING:  # imported where used: a single host needs neither at start-up
    from xvmd.daemon.grouping import GroupRuntime
    from xvmd.daemon.metrics import MetricsServer
    from xvmd.daemon.reloader import Reloader

log = logging.getLogger("xvmd")

__all__ = ["DRAIN_TIMEOUT", "Daemon", "StartupError", "open_sockets"]

RECONNECT_INTERVAL = 5.0
STATS_INTERVAL = 60.0
DRAIN_TIMEOUT = 10.0
"""Seconds a stop waits for requests in flight (systemd's TimeoutStopSec is 30)."""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        backend: Backend,
        snapshot: Snapshot | None = None,
        quorum: QuorumSource | None = None,
        links: Callable[[str | None, LinkEvent], LinkFollower | None] = follow_links,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.backend = backend
        self.snapshot = snapshot
        self.quorum = quorum  # None: --local
        self.started = time.time()
        self.backend_up = False
        self.where: list[str] = []
        self._stop = asyncio.Event()
        self._transports: list[udp.DatagramEndpoint] = []
        self._servers: list[asyncio.Server] = []
        self._service: FenceService | None = None
        self._sockets: list[tuple[ListenAddress, socket.socket]] = []
        self._follow_links = links  # netlink in production; tests pass a stand-in
        self._links: LinkFollower | None = None
        self._reloader: Reloader | None = None
        self._audit: AuditLog | None = None
        self._group: GroupRuntime | None = None
        self._cache: DomainCache | None = None
        self._metrics: MetricsServer | None = None

    @property
    def metrics_url(self) -> str | None:
        return self._metrics.url if self._metrics is not None else None

    def request_stop(self) -> None:
        if not self._stop.is_set():
            systemd.stopping()
        self._stop.set()

    def _on_link(self, name: str, index: int, exists: bool, up: bool) -> None:
        """A network interface appeared, changed or vanished (from the netlink watcher)."""
        wanted = self.settings.interface
        if wanted is not None and name != wanted:
            return
        if not exists or not up:
            if wanted is not None:
                log.warning(
                    "interface %s %s: no multicast requests arrive until it is back",
                    name,
                    "removed" if not exists else "down",
                )
            return
        for lst, sock in self._sockets:
            try:
                added = udp.join(sock, lst.group, index if wanted else 0)
            except OSError as exc:
                log.warning("cannot rejoin %s on %s: %s", lst.group, name, exc.strerror or exc)
                continue
            if added:
                log.info("rejoined multicast group %s on %s (index %d)", lst.group, name, index)

    async def _listen(
        self, sockets: list[tuple[ListenAddress, socket.socket]], service: FenceService
    ) -> None:
        self._sockets = sockets
        for lst, sock in sockets:
            self._transports.append(await udp.listen(sock, service.datagram_received))
            self.where.append(f"{lst.group} port {lst.port}")
        if self.settings.tcp is not None:
            host, port = self.settings.tcp
            try:
                self._servers.append(await tcp.start_listener(host, port, service.stream_client))
            except OSError as exc:
                raise bind_error(f"TCP {host} port {port}", exc) from None
            self.where.append(f"TCP {host} port {port}")
        if self.settings.metrics is not None:
            from xvmd.daemon.metrics import serve  # prometheus_client loads only if asked

            host, port = self.settings.metrics
            try:
                self._metrics = serve(host, port, self.status, asyncio.get_running_loop())
            except OSError as exc:
                raise bind_error(f"metrics {host} port {port}", exc) from None
            self.where.append(f"metrics {self._metrics.url}")
        if self.settings.control:
            try:
                self._servers.append(
                    await control.serve(self.settings.control, self.status, self._command)
                )
            except control.ControlError as exc:
                raise StartupError(str(exc)) from None

    async def run(self, sockets: list[tuple[ListenAddress, socket.socket]]) -> int:
        """Serve until SIGTERM/SIGINT; the same ordered shutdown after a start-up error."""
        loop = asyncio.get_running_loop()
        clock = Clock(now=time.monotonic, sleep=time.sleep)
        runner = BackendRunner(self.backend, clock, workers=self.settings.workers)
        try:
            service = self._build(runner)
            self._install_signals(service)
            await self._start(sockets, service, runner)
            housekeeping = asyncio.create_task(self._housekeeping(runner, service))
            pings = asyncio.create_task(_watchdog(systemd.watchdog_interval()))
            await self._stop.wait()
            housekeeping.cancel()
            pings.cancel()
            log.info("stopping: no new requests; waiting for %d in flight", service.active_sessions)
        finally:
            await self._shutdown(sockets, runner)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    def _build(self, runner: BackendRunner) -> FenceService:
        """The audit trail and the service. Raises StartupError."""
        loop = asyncio.get_running_loop()
        audit = None
        if self.settings.audit:
            try:
                audit = self._audit = AuditLog(self.settings.audit)
            except AuditError as exc:
                raise StartupError(str(exc)) from None
        service = self._service = FenceService(
            Hashes(self.settings.hash, self.settings.auth),
            self.policy,
            runner,
            limits=Limits(max_sessions=self.settings.max_sessions),
            now=loop.time,
            quorum=self.quorum.current if self.quorum is not None else None,
            audit=audit,
        )
        if audit is not None:
            restore_replay_memory(service.history, audit.path, loop.time())
        self._cache = DomainCache(runner)
        if self.quorum is not None and self.snapshot is not None:
            # Several hosts may serve this guest cluster: they decide together who answers.
            from xvmd.daemon.grouping import GroupRuntime

            self._group = GroupRuntime(
                self.snapshot.cluster.name,
                runner,
                self._cache,
                policy=lambda: service.policy,
                quorum=self.quorum.current,
                state=self.settings.state,
            )
            service.use_hosts(self._group.hosts)
        return service

    def _install_signals(self, service: FenceService) -> None:
        loop = asyncio.get_running_loop()
        audit = self._audit
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if self.snapshot is None or self.settings.config is None:
            loop.add_signal_handler(signal.SIGHUP, self._reload_key, service)
            return

        def apply(snap: Snapshot) -> None:
            service.policy = Policy.from_snapshot(snap)
            if self._group is not None:
                self._group.changed()  # the devices served may have changed

        from xvmd.daemon.reloader import Reloader

        self._reloader = Reloader(
            self.settings.config,
            self.settings.devices,
            self.snapshot,
            apply,
            on_reload=audit.reopen if audit is not None else None,
            corosync=self.settings.corosync,
        )
        self._reloader.start()
        loop.add_signal_handler(signal.SIGHUP, self._reloader.trigger)

    async def _start(
        self,
        sockets: list[tuple[ListenAddress, socket.socket]],
        service: FenceService,
        runner: BackendRunner,
    ) -> None:
        loop = asyncio.get_running_loop()
        audit = self._audit
        if self.quorum is not None:
            await self.quorum.start()
        assert self._cache is not None
        if await self._cache.start():  # queries answered from the hypervisor's events
            runner.known = self._cache
        if self._group is not None:
            await self._group.start()
        await self._listen(sockets, service)

        # Re-created interfaces (a libvirt network restarted, a bridge rebuilt) lose their
        # group memberships: follow link events and join again.
        def link_event(name: str, index: int, exists: bool, up: bool) -> None:
            loop.call_soon_threadsafe(self._on_link, name, index, exists, up)

        self._links = self._follow_links(self.settings.interface, link_event)
        if self._links is not None:
            self._links.start()
        log.info(
            "xvmd ready: %s on %s; hash >= %s, auth %s; backend %s; %s",
            ", ".join(self.where),
            self.settings.interface or "any interface",
            self.settings.hash.label,
            self.settings.auth.label,
            self.backend.description,
            "cluster mode (fencing only while quorate)" if self.quorum else "local mode",
        )
        if self.snapshot is not None:
            statusdoc.log_plan(self.snapshot)
        if not self.settings.needs_key:
            log.warning("authentication is OFF (--hash none --auth none): anyone can fence")
        if audit is not None:
            log.info("audit trail: %s", audit.path)
        systemd.ready(f"serving: {', '.join(self.where)}")
        self.backend_up = await runner.check_connection(loop.time() + 10)
        if not self.backend_up:
            log.error(
                "cannot reach %s yet; requests fail until it answers (retrying every %gs)",
                self.backend.description,
                RECONNECT_INTERVAL,
            )

    async def _shutdown(
        self, sockets: list[tuple[ListenAddress, socket.socket]], runner: BackendRunner
    ) -> None:
        """In order: take no new requests; let those in flight finish, with quorum still
        followed (a power action mid-handshake is carried out and answered); only then let go
        of quorum, the worker pool, the hypervisor and the audit trail."""
        if self._links is not None:
            self._links.stop()
        if self._metrics is not None:
            self._metrics.stop()
        if self._reloader is not None:
            await self._reloader.stop()
        for tr in self._transports:
            tr.close()
        if not self._transports:  # start-up failed before the sockets were handed over
            for _, sock in sockets:
                sock.close()
        for srv in self._servers:
            srv.close()
        service = self._service
        if service is not None:
            left = await service.drain(DRAIN_TIMEOUT)
            if left:
                log.warning("%d requests cut off at exit after %gs", left, DRAIN_TIMEOUT)
        if self._group is not None:
            await self._group.stop()
        if self._cache is not None:
            await self._cache.stop()
        if self.quorum is not None:
            await self.quorum.stop()
        runner.shutdown()
        close_within(self.backend.close, CLOSE_TIMEOUT, self.backend.description)
        if self._audit is not None:
            self._audit.close()
        if service is not None:
            _log_stats(service, final=True)

    def _reload_key(self, service: FenceService) -> None:
        """SIGHUP without cluster.conf: re-read the key file (a key rotation), as fence_xvmd did.
        A key that cannot be read is reported and the old one stays in force."""
        systemd.reloading()
        if self._audit is not None:
            self._audit.reopen()
        try:
            key, warnings = load_key(self.settings.key_file)
        except KeyFileError as exc:
            log.error("SIGHUP: %s; still using the key loaded before", exc)
        else:
            for warning in warnings:
                log.warning("%s", warning)
            service.policy = Policy.unrestricted([key])
            log.info("SIGHUP: key %s re-read", self.settings.key_file)
        systemd.ready("key re-read")

    async def _command(self, request: dict[str, Any], peer: control.Peer) -> dict[str, Any]:
        return await commands.run(request, peer, self._group, self._audit)

    def status(self) -> dict[str, Any]:
        """Everything ``xvmd status`` shows, as plain data."""
        service = self._service
        snap = self._reloader.current if self._reloader is not None else self.snapshot
        reloads = self._reloader.reloads if self._reloader is not None else 0
        config = statusdoc.config(snap, reloads) if snap is not None else None
        quorum = None
        if self.quorum is not None:
            quorum = dataclasses.asdict(self.quorum.current())
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "instance": self.settings.instance,
            "mode": "cluster" if self.quorum is not None else "local",
            "listeners": self.where,
            "backend": {"description": self.backend.description, "reachable": self.backend_up},
            "quorum": quorum,
            "config": config,
            "reload": self._reloader.status() if self._reloader is not None else None,
            "audit": self._audit.status() if self._audit is not None else None,
            "counters": {
                "answered": dict(service.stats.served) if service else {},
                "dropped": dict(service.stats.dropped) if service else {},
                "by_op": service.stats.by_op_dict() if service else {},
                "latency": service.stats.latency.as_dict() if service else None,
            },
            "hosts": self._group.status() if self._group is not None else None,
            "active_sessions": service.active_sessions if service else 0,
            "recent": service.recent if service else [],
        }

    async def _housekeeping(self, runner: BackendRunner, service: FenceService) -> None:
        loop = asyncio.get_running_loop()
        last_stats = loop.time()
        reported: Counter[str] = Counter()
        while True:
            await asyncio.sleep(RECONNECT_INTERVAL)
            # Re-open a lost hypervisor connection in the background, so the next request
            # finds it ready; requests never wait for a reconnect themselves.
            now_up = await runner.check_connection(loop.time() + RECONNECT_INTERVAL)
            if now_up != self.backend_up:
                log.log(
                    logging.INFO if now_up else logging.ERROR,
                    "%s is %s",
                    self.backend.description,
                    "reachable" if now_up else "unreachable",
                )
                self.backend_up = now_up
            service.log_summaries()
            if self._cache is not None:
                self._cache.refresh_if_empty()
            if loop.time() - last_stats >= STATS_INTERVAL:
                last_stats = loop.time()
                if service.stats.dropped != reported:
                    _log_stats(service)
                    reported = Counter(service.stats.dropped)


async def _watchdog(interval: float | None) -> None:
    """WATCHDOG=1 from the event loop itself: a wedged loop stops the pings and systemd
    restarts the daemon."""
    if interval is None:
        return
    while True:
        systemd.watchdog()
        await asyncio.sleep(interval)


def _log_stats(service: FenceService, final: bool = False) -> None:
    dropped = service.stats.dropped
    served = service.stats.served
    if not dropped and not served and not final:
        return
    parts = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none"
    done = ", ".join(f"{k} {v}" for k, v in sorted(served.items())) or "none"
    log.info("totals: answered %s; dropped %s", done, parts)
