"""``xvmd audit``: who fenced what, when, and did it work -- read from the audit trail.

Exit codes: 0 printed (possibly nothing matched), 2 the file cannot be read or --since is bad.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from xvmd.cli.common import instance_name, port_number
from xvmd.daemon import paths
from xvmd.daemon.settings import DEFAULT_PORT

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SinceError(ValueError):
    pass


def parse_since(text: str, now: float) -> float:
    """``30m``, ``2h``, ``7d`` ago, or an ISO date/time (UTC): the epoch to start from."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return float(time.mktime(time.strptime(text.strip().rstrip("Z"), fmt))) - time.timezone
        except ValueError:
            continue
    raise SinceError(f"--since {text!r}: use e.g. 30m, 2h, 7d or 2026-11-24T10:00:00")


def read(path: str) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, record) for every line; None for a line that is no record: a record cut
    by a full disk or a crash, or anything else that is not a JSON object with a numeric epoch."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            ok = isinstance(rec, dict) and isinstance(rec.get("epoch", 0), int | float)
            yield n, rec if ok else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xvmd audit", description="Show the audit trail.")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--file", metavar="PATH", help=f"audit trail to read (default {paths.DEFAULT_AUDIT})"
    )
    which.add_argument(
        "--instance",
        metavar="NAME",
        type=instance_name,
        help=f"the trail of the daemon started with --instance NAME "
        f"({paths.STATE_DIR}/audit-NAME.jsonl)",
    )
    which.add_argument(
        "-p",
        dest="port",
        metavar="PORT",
        type=port_number,
        help=f"the trail of the daemon started without --instance on UDP port PORT "
        f"({paths.STATE_DIR}/audit-PORT.jsonl)",
    )
    p.add_argument("--since", metavar="WHEN", help="only records since: 30m, 2h, 7d or ISO time")
    p.add_argument(
        "--target",
        metavar="NAME",
        help="only requests naming this target or mapped domain (any case)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    return p


COLUMNS = ("time", "requester", "device", "op", "target", "result", "ms", "quorum", "detail")


def render(records: list[dict[str, Any]], out: TextIO) -> None:
    rows = []
    for r in records:
        target = str(r.get("target") or "-")
        if r.get("domain"):
            target += f" -> {r['domain']}"
        rows.append(
            [
                str(r.get("time", "?")).replace("T", " ").rstrip("Z"),
                str(r.get("requester", "?")),
                str(r.get("device") or "-"),
                str(r.get("op", "?")),
                target,
                str(r.get("result", "?")),
                f"{r.get('ms', 0):.0f}",
                str(r.get("quorum", "-")),
                str(r.get("detail", "")),
            ]
        )
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(COLUMNS)]
    print(
        "  ".join(c.upper().ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip(),
        file=out,
    )
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.file is None:  # the same naming rule as the daemon's own default
        args.file = paths.instance_paths(args.instance, args.port or DEFAULT_PORT)[1]
    try:
        since = parse_since(args.since, time.time()) if args.since else None
    except SinceError as exc:
        print(f"xvmd audit: {exc}", file=sys.stderr)
        return 2
    records: list[dict[str, Any]] = []
    bad: list[int] = []  # line numbers of torn or foreign lines: reported, never silently lost
    try:
        for n, rec in read(args.file):
            if rec is None:
                bad.append(n)
            elif _wanted(rec, since, args.target):
                records.append(rec)
    except OSError as exc:
        print(f"xvmd audit: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.json:
        for rec in records:
            print(json.dumps(rec, sort_keys=True))
    else:
        render(records, sys.stdout)
    if bad:
        print(f"xvmd audit: {skipped(bad)} in {args.file}", file=sys.stderr)
    return 0


SHOWN_LINES = 5  # line numbers named in the report


def skipped(bad: list[int]) -> str:
    """``3 unreadable lines skipped (torn records?) at lines 4, 9, 12``."""
    where = ", ".join(str(n) for n in bad[:SHOWN_LINES])
    if len(bad) > SHOWN_LINES:
        where += ", ..."
    plural = "s" if len(bad) > 1 else ""
    return f"{len(bad)} unreadable line{plural} skipped (torn records?) at line{plural} {where}"


def _wanted(rec: dict[str, Any], since: float | None, target: str | None) -> bool:
    if since is not None and float(rec.get("epoch", 0)) < since:
        return False
    if target:
        names = {str(rec.get("target", "")).casefold(), str(rec.get("domain", "")).casefold()}
        return target.casefold() in names
    return True
