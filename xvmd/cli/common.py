"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse

from xvmd.daemon import paths


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
