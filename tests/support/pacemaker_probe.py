"""xvmd's Pacemaker edge, run once inside a lab node; prints one JSON object on stdout.

``python -m tests.support.pacemaker_probe history NODE``: ``{"events": [...]}`` (each event
as ``FencingEvent`` fields, ``state`` as its value) or ``{"error": "..."}`` when
``PacemakerUnavailable`` is raised. ``... available``: ``{"available": true|false}``.
Run with nsenter inside a node (tests/support/pacemaker_lab.py) so it reaches that node's
fencer, exactly as the daemon would.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from typing import Any

from xvmd.daemon.pacemaker import PacemakerUnavailable, available, fencing_history
from xvmd.hosts.fencehistory import EventState, FencingEvent


def event_from_json(doc: dict[str, Any]) -> FencingEvent:
    """The inverse of what ``history`` prints for one event."""
    return FencingEvent(**{**doc, "state": EventState(doc["state"])})


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    history = sub.add_parser("history")
    history.add_argument("node")
    sub.add_parser("available")
    args = parser.parse_args(argv)
    if args.command == "available":
        return {"available": await available()}
    try:
        events = await fencing_history(args.node)
    except PacemakerUnavailable as e:
        return {"error": str(e)}
    return {"events": [dataclasses.asdict(e) for e in events]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())), flush=True)
