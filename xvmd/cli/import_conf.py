"""``xvmd import-fence-virt-conf``: what an existing fence_virtd setup becomes under xvmd.

Exit codes: 0 converted (anything not carried over is listed), 2 unreadable or not valid syntax.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence

from xvmd.cli.fvconf import FvConfError, convert, parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvmd import-fence-virt-conf",
        description="Translate fence_virtd's configuration into xvmd settings and say what "
        "cannot be carried over.",
    )
    p.add_argument(
        "path",
        nargs="?",
        default="/etc/fence_virt.conf",
        help="fence_virt.conf to read (default /etc/fence_virt.conf)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        with open(args.path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        print(
            f"xvmd import-fence-virt-conf: cannot read {args.path}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    try:
        migration = convert(parse(text))
    except FvConfError as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(
            {
                "file": args.path,
                "options": migration.options,
                "command": migration.command,
                "notes": migration.notes,
                "not_carried_over": migration.dropped,
            },
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    print(f"# From {args.path}")
    print("# Run xvmd with:")
    print(f"{migration.command}")
    print("#\n# or, for the packaged unit, in /etc/default/xvmd:")
    print(f"XVMD_OPTS={shlex.quote(shlex.join(migration.options))}")
    if migration.notes:
        print("#\n# Notes:")
        for note in migration.notes:
            print(f"#  - {note}")
    if migration.dropped:
        print("#\n# Not carried over:")
        for item in migration.dropped:
            print(f"#  - {item}")
    else:
        print("#\n# Everything was carried over.")
    return 0
