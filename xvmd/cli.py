"""Command line: parse arguments, report errors plainly, hand over to the daemon.

Exit codes: 0 clean stop, 1 cannot start (key, interface, port, backend), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from . import __version__
from . import log as xlog
from .keys import KeyFileError, load_key
from .protocol.auth import Key
from .protocol.wire import HashType
from .settings import (
    DEFAULT_KEY_FILE,
    DEFAULT_PORT,
    DEFAULT_URI,
    Settings,
    SettingsError,
    parse_tcp,
)

HASHES = ["none", "sha1", "sha256", "sha512"]


def _port(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvmd",
        description="Host daemon answering fence_xvm requests from guest clusters: "
        "powers libvirt domains off, on or through a reboot.",
        epilog="Option names follow fence_xvmd. Logs go to stderr, one line per request.",
    )
    p.add_argument(
        "--local", action="store_true", help="non-cluster mode: no corosync quorum checks"
    )
    p.add_argument(
        "--no-ccs",
        action="store_true",
        help="do not read cluster.conf; all settings come from the command line",
    )
    p.add_argument(
        "-k",
        dest="key_file",
        metavar="KEYFILE",
        default=DEFAULT_KEY_FILE,
        help=f"shared key file (default {DEFAULT_KEY_FILE})",
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
        type=_port,
        default=DEFAULT_PORT,
        help=f"UDP port to listen on (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "-i",
        dest="family",
        choices=["auto", "ipv4", "ipv6"],
        default="auto",
        help="address family (default auto: both default groups, or that of -a)",
    )
    p.add_argument(
        "-U",
        dest="uri",
        metavar="URI",
        default=DEFAULT_URI,
        help=f"libvirt URI (default {DEFAULT_URI})",
    )
    p.add_argument(
        "--hash",
        choices=HASHES,
        default="sha256",
        help="weakest request signature accepted (default sha256)",
    )
    p.add_argument(
        "--auth",
        choices=HASHES,
        default="sha256",
        help="challenge-response hash; must match the clients' -C (default sha256)",
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
    p.add_argument("--version", action="version", version=f"xvmd {__version__}")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Raises SettingsError."""
    tcp = parse_tcp(args.tcp, args.port) if args.tcp is not None else None
    settings = Settings(
        key_file=args.key_file,
        interface=args.interface,
        address=args.address,
        port=args.port,
        family=args.family,
        uri=args.uri,
        hash=HashType.from_name(args.hash),
        auth=HashType.from_name(args.auth),
        debug=args.debug,
        tcp=tcp,
        local=args.local,
        no_ccs=args.no_ccs,
    )
    settings.listeners()  # validates -a / -i now, as a usage error
    return settings


def _fail(message: str, code: int = 1) -> int:
    print(f"xvmd: error: {message}", file=sys.stderr)
    return code


def run(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        parser.error(str(exc))
    if not (settings.local and settings.no_ccs):
        parser.error(
            "cluster mode and cluster.conf are not available in this version yet; "
            "run with --local --no-ccs"
        )
    xlog.setup(settings.debug)
    log = logging.getLogger("xvmd")
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
    return _serve(settings, keys)


def _serve(settings: Settings, keys: list[Key]) -> int:
    from .backend.libvirt import LibvirtBackend  # libvirt loads only when the daemon runs
    from .daemon import Daemon, StartupError, open_sockets

    try:
        sockets = open_sockets(settings)
    except (StartupError, SettingsError) as exc:
        return _fail(str(exc))
    daemon = Daemon(settings, keys, LibvirtBackend(settings.uri))
    try:
        return asyncio.run(daemon.run(sockets))
    except StartupError as exc:
        return _fail(str(exc))


SUBCOMMANDS = ("check-config",)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check-config":
        from . import checkconfig

        return checkconfig.main(args[1:])
    return run(args)
