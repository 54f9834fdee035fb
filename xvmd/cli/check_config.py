"""``xvmd check-config``: validate a deployment before it goes live, and show what it will do.

Exit codes: 0 valid (warnings allowed), 1 errors (or an internal error, reported in one line),
2 the file was not read (missing, not a regular file, too large).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

import ccs
import ccs.source
from ccs import document
from ccs.issues import Severity
from ccs.load import LoadResult


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvmd check-config",
        description="Validate cluster.conf and the key files it names; print what this host "
        "would serve.",
    )
    p.add_argument(
        "-f",
        dest="config",
        metavar="PATH",
        default=ccs.DEFAULT_CLUSTER_CONF,
        help="a cluster.conf, or a Pacemaker CIB export (told apart by its content) "
        f"(default {ccs.DEFAULT_CLUSTER_CONF})",
    )
    p.add_argument(
        "--corosync-conf",
        dest="corosync",
        metavar="PATH",
        help="with a CIB export: the guest cluster's corosync.conf (default: corosync.conf "
        "beside the CIB export)",
    )
    p.add_argument(
        "-D",
        "--device",
        dest="devices",
        metavar="NAME",
        action="append",
        help="fence device this host serves (repeatable; default: <fence_xvmd "
        "device=...>, else every fence_xvm device whose key file is readable here)",
    )
    p.add_argument(
        "--no-resolve",
        action="store_true",
        help="do not look node names up (no requester map, no unresolved-node warnings)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _counts(result: LoadResult) -> tuple[int, int]:
    errors = sum(1 for i in result.issues if i.severity is Severity.ERROR)
    return errors, len(result.issues) - errors


def as_json(result: LoadResult, path: str) -> dict[str, object]:
    errors, warnings = _counts(result)
    out: dict[str, object] = {
        "file": path,
        "readable": result.unreadable is None,
        "valid": result.snapshot is not None,
        "errors": errors,
        "warnings": warnings,
        "issues": [i.as_dict() for i in result.issues],
    }
    cl = result.cluster
    if cl is not None:
        out["cluster"] = {
            "name": cl.name,
            "config_version": cl.config_version,
            "source": cl.kind,
            "files": [cl.file, *cl.sources],
            "nodes": len(cl.nodes),
            "two_node": cl.cman.two_node,
            "expected_votes": cl.cman.expected_votes,
        }
    if result.plan is not None and cl is not None:
        out["served"] = document.served(cl, result.plan)
        out["not_served"] = document.not_served(result.plan)
    return out


def render(result: LoadResult, path: str, out: TextIO) -> None:
    for issue in result.issues:
        print(issue.render(), file=out)
    cl, plan = result.cluster, result.plan
    if cl is not None and plan is not None:
        print(
            f"\n{document.source(cl)}; {len(cl.nodes)} nodes",
            file=out,
        )
        if plan.devices:
            print("this host serves:", file=out)
        for sd in plan.devices:
            print(
                f"  device {sd.name} ({sd.device.agent}), key {cl.key_path(sd.device)} "
                f"({len(sd.key)} bytes)",
                file=out,
            )
            if not sd.nodes:
                print("    (no cluster node is fenced through this device)", file=out)
            width = max((len(t.node) for t in sd.nodes), default=0)
            for t in sd.nodes:
                also = [n for n in t.names if n != t.node]
                extra = f"  (also answers to {', '.join(also)})" if also else ""
                kind = "uuid" if t.use_uuid else "domain"
                print(f"    {t.node:<{width}} -> {kind} {t.domain}{extra}", file=out)
        for ns in plan.not_served:
            print(f"  not served here: device {ns.device}: {ns.reason}", file=out)
    errors, warnings = _counts(result)
    if result.unreadable:
        verdict = f"cannot check: {result.unreadable}"
    elif result.snapshot is not None:
        verdict = f"valid ({warnings} warning{'s' * (warnings != 1)})"
    else:
        verdict = (
            f"INVALID: {errors} error{'s' * (errors != 1)}, "
            f"{warnings} warning{'s' * (warnings != 1)}"
        )
    print(f"\n{path}: {verdict}", file=out)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    resolver = None if args.no_resolve else ccs.source.resolve
    try:
        result = ccs.load(args.config, args.devices, resolver, args.corosync)
    except Exception as exc:  # a bug, not a config problem: one line, not a traceback
        print(
            f"xvmd check-config: {args.config}: internal error while checking: "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        json.dump(as_json(result, args.config), sys.stdout, indent=2)
        print()
    else:
        render(result, args.config, sys.stdout)
    if result.unreadable is not None:
        return 2
    return 0 if result.snapshot is not None else 1
