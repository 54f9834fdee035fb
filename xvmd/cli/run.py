"""``xvmd`` itself: parse the daemon's options, load cluster.conf or the key, and run the
daemon.

Exit codes: 0 clean stop, 1 cannot start (key, interface, port, backend), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any

import ccs
import ccs.source
from ccs.load import Snapshot
from xvmd import __version__
from xvmd.cli.common import instance_name, port_number
from xvmd.core.policy import Policy
from xvmd.daemon import log as xlog
from xvmd.daemon import paths
from xvmd.daemon.keys import KeyFileError, load_key
from xvmd.daemon.settings import (
    DEFAULT_KEY_FILE,
    DEFAULT_PORT,
    DEFAULT_URI,
    Settings,
    SettingsError,
    parse_endpoint,
    parse_tcp,
)
from xvmd.protocol.auth import Key
from xvmd.protocol.wire import HashType

HASHES = ["none", "sha1", "sha256", "sha512"]
FAMILIES = ["auto", "ipv4", "ipv6"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvmd",
        description="Host daemon answering fence_xvm requests from guest clusters: "
        "powers libvirt domains off, on or through a reboot.",
        epilog="Option names follow fence_xvmd. Options given here override <fence_xvmd> in "
        "cluster.conf. Logs go to stderr, one line per request. "
        "Subcommands: 'xvmd check-config [-f PATH] [--json]', "
        "'xvmd status [--instance NAME] [--json]', 'xvmd audit [--since WHEN]', "
        "'xvmd import-fence-virt-conf [PATH]'.",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="non-cluster mode: no corosync quorum checks (default: cluster mode, power "
        "actions only while this host's corosync partition is quorate)",
    )
    p.add_argument(
        "--no-ccs",
        action="store_true",
        help="do not read cluster.conf; settings come from the command line only",
    )
    p.add_argument(
        "-f",
        dest="config",
        metavar="PATH",
        help="the guest cluster's configuration: a cluster.conf, or a Pacemaker CIB export "
        f"(cibadmin -Q) told apart by its content (default {ccs.DEFAULT_CLUSTER_CONF})",
    )
    p.add_argument(
        "--corosync-conf",
        dest="corosync",
        metavar="PATH",
        help="with a Pacemaker CIB export as -f: the guest cluster's corosync.conf (default: "
        "corosync.conf beside the CIB export)",
    )
    p.add_argument(
        "-D",
        "--device",
        dest="devices",
        metavar="NAME",
        action="append",
        help="cluster.conf fence device this host serves (repeatable; default: "
        "<fence_xvmd device=...>, else every fence_xvm device whose key is readable)",
    )
    p.add_argument(
        "-k",
        dest="key_file",
        metavar="KEYFILE",
        help=f"shared key file with --no-ccs (default {DEFAULT_KEY_FILE}); with "
        "cluster.conf the keys are the fence devices' key_file",
    )
    p.add_argument(
        "-I",
        dest="interface",
        metavar="IFACE",
        help="interface to join the multicast group on (default: any)",
    )
    p.add_argument(
        "-a",
        dest="address",
        metavar="ADDR",
        help="multicast group (default 225.0.0.12, and ff05::3:1 for IPv6)",
    )
    p.add_argument(
        "-p",
        dest="port",
        metavar="PORT",
        type=port_number,
        help=f"UDP port to listen on (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "-i",
        dest="family",
        choices=FAMILIES,
        help="address family (default auto: both default groups, or that of -a)",
    )
    p.add_argument("-U", dest="uri", metavar="URI", help=f"libvirt URI (default {DEFAULT_URI})")
    p.add_argument(
        "--hash", choices=HASHES, help="weakest request signature accepted (default sha256)"
    )
    p.add_argument(
        "--auth",
        choices=HASHES,
        help="challenge-response hash; must match the clients' -C (default sha256)",
    )
    p.add_argument(
        "--instance",
        metavar="NAME",
        type=instance_name,
        help="name of this daemon when several run on one host, one per guest cluster (letters, "
        "digits, '-', '_', '.'); it names the default --control and --audit paths",
    )
    p.add_argument(
        "--control",
        metavar="PATH",
        help=f"control socket read by 'xvmd status' ('none': off; default {paths.DEFAULT_CONTROL}"
        f", {paths.RUN_DIR}/xvmd-NAME.sock with --instance NAME, else "
        f"{paths.RUN_DIR}/xvmd-PORT.sock for a port other than {DEFAULT_PORT})",
    )
    p.add_argument(
        "--audit",
        metavar="PATH",
        help="append-only audit trail, one JSON line per request ('none': off; default "
        f"{paths.DEFAULT_AUDIT}, {paths.STATE_DIR}/audit-NAME.jsonl with --instance NAME, else "
        f"{paths.STATE_DIR}/audit-PORT.jsonl for a port other than {DEFAULT_PORT})",
    )
    p.add_argument(
        "--state",
        metavar="PATH",
        help="where cluster VMs were last seen, kept across restarts (cluster mode with a "
        "cluster.conf; 'none': memory only; default placements[-NAME|-PORT].json beside the "
        "audit trail)",
    )
    p.add_argument("-d", dest="debug", action="count", default=0, help="debug logging")
    p.add_argument(
        "--tcp",
        metavar="[ADDR][:PORT]",
        nargs="?",
        const="",
        default=None,
        help="also serve the TCP listener used by 'fence_virt -T' "
        "(default 127.0.0.1, same port as -p)",
    )
    p.add_argument(
        "--metrics",
        metavar="[ADDR][:PORT]",
        nargs="?",
        const="",
        default=None,
        help="serve metrics in the Prometheus text format over HTTP (default 127.0.0.1 port "
        f"{METRICS_PORT}; off unless given)",
    )
    p.add_argument("--version", action="version", version=f"xvmd {__version__}")
    return p


# <fence_xvmd> attribute -> (Settings field, converter); the command line wins over these.
_CCS_SETTINGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "multicast_address": ("address", str.strip),
    "port": ("port", int),
    "interface": ("interface", str.strip),
    "multicast_interface": ("interface", str.strip),
    "ip_family": ("family", lambda v: v.strip().lower()),
    "hash": ("hash", HashType.from_name),
    "auth": ("auth", HashType.from_name),
    "uri": ("uri", str.strip),
}


def settings_from_args(
    args: argparse.Namespace, ccs_attrs: Mapping[str, str] | None = None, config: str | None = None
) -> Settings:
    """Command line over ``<fence_xvmd>`` attributes over defaults. Raises SettingsError."""
    values: dict[str, object] = {}
    for attr, (name, convert) in _CCS_SETTINGS.items():
        raw = (ccs_attrs or {}).get(attr)
        if raw is not None and raw.strip():
            try:
                values[name] = convert(raw)
            except ValueError as exc:
                raise SettingsError(f'<fence_xvmd {attr}="{raw}">: {exc}') from None
    cli_values = {
        "key_file": args.key_file,
        "interface": args.interface,
        "address": args.address,
        "port": args.port,
        "family": args.family,
        "uri": args.uri,
        "hash": HashType.from_name(args.hash) if args.hash else None,
        "auth": HashType.from_name(args.auth) if args.auth else None,
    }
    values.update({k: v for k, v in cli_values.items() if v is not None})
    debug = args.debug
    ccs_debug = (ccs_attrs or {}).get("debug", "").strip()
    if not debug and ccs_debug.isdigit():
        debug = int(ccs_debug)
    settings = Settings(
        instance=args.instance,
        debug=debug,
        local=args.local,
        no_ccs=args.no_ccs,
        config=config,
        corosync=os.path.abspath(args.corosync) if args.corosync else None,
        devices=tuple(args.devices) if args.devices else None,
        **values,  # type: ignore[arg-type]
    )
    tcp = parse_tcp(args.tcp, settings.port) if args.tcp is not None else None
    metrics = (
        parse_endpoint(args.metrics, METRICS_PORT, "--metrics")
        if args.metrics is not None
        else None
    )
    # Derived only now that the port is known: it may come from <fence_xvmd port=...>.
    control, audit = paths.instance_paths(settings.instance, settings.port)
    audit_path = _path_option(args.audit, audit)
    state = paths.state_path(audit_path, settings.instance, settings.port)
    settings = replace(
        settings,
        tcp=tcp,
        metrics=metrics,
        control=_path_option(args.control, control),
        audit=audit_path,
        state=_path_option(args.state, state),
    )
    settings.listeners()  # validates -a / -i now, as a usage error
    return settings


def _path_option(given: str | None, derived: str) -> str | None:
    """An explicit --control/--audit wins over the derived path; 'none' turns it off."""
    if given is None:
        return derived
    return None if given == "none" else os.path.abspath(given)


def _fail(message: str, code: int = 1) -> int:
    print(f"xvmd: error: {message}", file=sys.stderr)
    return code


def _load_cluster_conf(
    path: str, devices: Sequence[str] | None, corosync: str | None
) -> Snapshot | int:
    result = ccs.load(path, devices, ccs.source.resolve, corosync)
    if result.snapshot is None:
        for issue in result.issues:
            print(issue.render(), file=sys.stderr)
        if result.unreadable:
            return _fail(
                f"cannot read the configuration: {result.unreadable} (use --no-ccs to run "
                "without it)"
            )
        errors = sum(1 for i in result.issues if i.severity is ccs.Severity.ERROR)
        return _fail(
            f"{path} has {errors} errors; not starting (details above, or run "
            f"'xvmd check-config -f {path}')"
        )
    return result.snapshot


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_ccs and (args.config or args.devices or args.corosync):
        parser.error(
            "-f, -D and --corosync-conf name the guest cluster's configuration; they cannot "
            "be combined with --no-ccs"
        )
    xlog.setup(args.debug)
    log = logging.getLogger("xvmd")
    snapshot: Snapshot | None = None
    config = None
    if not args.no_ccs:
        config = os.path.abspath(args.config or ccs.DEFAULT_CLUSTER_CONF)
        corosync = os.path.abspath(args.corosync) if args.corosync else None
        loaded = _load_cluster_conf(config, args.devices, corosync)
        if isinstance(loaded, int):
            return loaded
        snapshot = loaded
    fx = snapshot.cluster.fence_xvmd if snapshot else None
    try:
        settings = settings_from_args(args, fx.attrs if fx else None, config)
    except SettingsError as exc:
        parser.error(str(exc))
    if settings.debug != args.debug:
        xlog.setup(settings.debug)
    if snapshot is not None:
        if args.key_file:
            log.warning(
                "-k %s is not used: with cluster.conf the keys are the fence devices' key_file",
                args.key_file,
            )
        return _serve(settings, Policy.from_snapshot(snapshot), snapshot)
    if not settings.local:
        log.warning(
            "cluster mode without cluster.conf: quorum is checked, but any requester may "
            "reach any domain"
        )
    keys: list[Key] = []
    try:
        key, warnings = load_key(settings.key_file)
    except KeyFileError as exc:
        if settings.needs_key:
            return _fail(f"{exc}; refusing to run without authentication")
        # --hash none --auth none: the key is optional, but without it requests that a client
        # signed anyway (fence_xvm signs with sha256 unless told -c none) cannot be verified.
        log.warning("%s: only unsigned requests (fence_xvm -c none) can be served", exc)
    else:
        for warning in warnings:
            log.warning("%s", warning)
        keys.append(key)
    return _serve(settings, Policy.unrestricted(keys), None)


METRICS_PORT = 9701
"""The metrics endpoint's port when --metrics names none."""

LOOP_ENV = "XVMD_EVENT_LOOP"
"""``asyncio``: run on the standard library's loop even where uvloop is installed."""


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon on uvloop (faster sockets and timers, measured with ``python -m bench``)
    where it is installed, else on the standard loop; the code is the same on both."""
    log = logging.getLogger("xvmd")
    if os.environ.get(LOOP_ENV) != "asyncio":
        try:
            import uvloop
        except ImportError:
            log.info("uvloop is not installed: running on the standard asyncio loop")
        else:
            # asyncio.Runner, not uvloop.run: Debian 12's uvloop 0.17 has no run().
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def _serve(settings: Settings, policy: Policy, snapshot: Snapshot | None) -> int:
    from xvmd.backend.libvirt import LibvirtBackend  # libvirt loads only when the daemon runs

    backend = LibvirtBackend(settings.uri)
    backend.warm_up()  # connects while the rest is imported and set up
    from xvmd.daemon import shutdown
    from xvmd.daemon.daemon import Daemon, StartupError, open_sockets

    # Before anything is bound: a path that cannot work must leave the port free.
    problem = paths.check_paths(settings.control, settings.audit)
    if problem is not None:
        return _fail(problem)
    try:
        sockets = open_sockets(settings)
    except (StartupError, SettingsError) as exc:
        return _fail(str(exc))
    quorum = None
    if not settings.local:
        from xvmd.quorum.source import CorosyncQuorum

        quorum = CorosyncQuorum()
    daemon = Daemon(settings, policy, backend, snapshot, quorum)
    try:
        rc = run_loop(daemon.run(sockets))
    except StartupError as exc:
        return _fail(str(exc))
    # A wedged hypervisor call would keep the process alive at exit: leave without it.
    return shutdown.leave(rc)
