"""``xvmd confirm-host-down HOST``: an operator's word that a host which left the group is
really off, so that its VMs may be reported fenced to the guest cluster.

Say it only once the host is off: powered down at its switch or BMC, or known destroyed. The
daemon accepts it only while HOST is not a member of the host group; every member applies it,
the audit trail records who said it and when, and it is void as soon as HOST comes back.

Exit codes: 0 accepted, 1 refused (the reason is printed), 2 no daemon answered.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xvmd.cli.common import add_daemon_choice, chosen_daemon
from xvmd.daemon import paths
from xvmd.daemon.control import ControlError, query
from xvmd.daemon.settings import DEFAULT_PORT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvmd confirm-host-down",
        description="Confirm that a host which left the host group is down (off for certain), "
        "so that the VMs last seen on it are reported fenced. Without --control, --instance "
        f"or -p: the daemon on {paths.DEFAULT_CONTROL}.",
    )
    p.add_argument("host", metavar="HOST", help="the host's corosync node name (or node id)")
    add_daemon_choice(p)
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    path = chosen_daemon(args) or paths.instance_paths(None, DEFAULT_PORT)[0]
    request = {"command": "confirm-host-down", "host": args.host}
    try:
        answer = query(path, timeout=15.0, request=request)
    except ControlError as exc:
        print(f"xvmd confirm-host-down: {exc}", file=sys.stderr)
        return 2
    if answer.get("ok"):
        print(f"host {answer.get('host')} (node {answer.get('node')}): {answer.get('detail')}")
        return 0
    print(f"xvmd confirm-host-down: refused: {answer.get('error')}", file=sys.stderr)
    return 1
