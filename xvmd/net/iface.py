"""Network interfaces, resolved over netlink with pyroute2."""

from __future__ import annotations

from pyroute2 import IPRoute


class InterfaceError(Exception):
    """A named interface does not exist."""


def interface_index(name: str) -> int:
    """The kernel's index for interface ``name``.

    Raises:
        InterfaceError: no such interface in this network namespace.
    """
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    if not found:
        raise InterfaceError(f"network interface {name!r} does not exist")
    return int(found[0])
