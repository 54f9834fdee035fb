"""Argument types and options shared by the subcommands."""

from __future__ import annotations

import argparse

from xvmd.daemon import paths
from xvmd.daemon.settings import DEFAULT_PORT


def port_number(text: str) -> int:
    """argparse type of a UDP port (shared with ``xvmd status``)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..65535")
    return value


def instance_name(text: str) -> str:
    """argparse type of ``--instance`` (shared with ``xvmd status``)."""
    problem = paths.instance_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_daemon_choice(p: argparse.ArgumentParser) -> None:
    """``--control``, ``--instance`` or ``-p``: which running daemon a subcommand talks to."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--control", metavar="PATH", help="the daemon's control socket")
    which.add_argument(
        "--instance",
        metavar="NAME",
        type=instance_name,
        help=f"the daemon started with --instance NAME ({paths.RUN_DIR}/xvmd-NAME.sock)",
    )
    which.add_argument(
        "-p",
        dest="port",
        metavar="PORT",
        type=port_number,
        help=f"the daemon started without --instance on UDP port PORT "
        f"({paths.RUN_DIR}/xvmd-PORT.sock; {paths.DEFAULT_CONTROL} for {DEFAULT_PORT})",
    )


def chosen_daemon(args: argparse.Namespace) -> str | None:
    """The control socket the options of ``add_daemon_choice`` name; None: none named."""
    if args.control is not None:
        return str(args.control)
    if args.instance is not None or args.port is not None:
        return paths.instance_paths(args.instance, args.port or DEFAULT_PORT)[0]
    return None
