"""Network interfaces: name -> index, and link change events over netlink (pyroute2).

The only module that imports pyroute2, and only in the watcher's thread: the package costs
about 12 MiB and 90 ms to import, which a daemon bound to loopback never needs.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("xvmd.net")

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
SIOCGIFFLAGS = 0x8913


class InterfaceError(Exception):
    """A named interface does not exist."""


def interface_index(name: str) -> int:
    """The kernel's index for interface ``name``.

    Raises:
        InterfaceError: no such interface in this network namespace.
    """
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise InterfaceError(f"network interface {name!r} does not exist") from None


def is_loopback(name: str) -> bool:
    """Whether ``name`` is a loopback interface, which is never removed or re-created.

    Asked of the kernel (SIOCGIFFLAGS) in the daemon's own network namespace: /sys/class/net
    shows the namespace sysfs was mounted in, which need not be the daemon's."""
    request = struct.pack("16sH", name.encode()[:15], 0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    except OSError:
        return False
    (flags,) = struct.unpack_from("H", reply, 16)
    return bool(flags & IFF_LOOPBACK)


LinkEvent = Callable[[str, int, bool, bool], None]
"""(name, index, exists, up) for every link that appears, changes or goes away."""


class LinkFollower(Protocol):
    """What the daemon needs of a link watcher: ``LinkWatcher``, or a test's stand-in."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def follow_links(interface: str | None, on_event: LinkEvent) -> LinkFollower | None:
    """A watcher of link events for the daemon's interface (``None``: any), or none at all
    for loopback, which is never removed or re-created."""
    if interface is not None and is_loopback(interface):
        return None
    return LinkWatcher(on_event)


class LinkWatcher:
    """Follows RTM_NEWLINK / RTM_DELLINK on a netlink socket in a thread of its own.

    The callback runs on that thread: it must only hand the event over to the event loop.
    The netlink socket is made in the thread too: pyroute2's synchronous API runs an asyncio
    loop of its own, which cannot nest inside the daemon's.
    """

    def __init__(self, on_event: LinkEvent) -> None:
        self._on_event = on_event
        self._stopping = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-watch", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        self._ready.wait(timeout)

    def _run(self) -> None:
        try:
            from pyroute2 import IPRoute  # heavy: imported only where links are followed
            from pyroute2.netlink.rtnl import RTMGRP_LINK

            ipr = IPRoute()
            ipr.bind(groups=RTMGRP_LINK)
        except Exception as exc:  # pyroute2 raises plain OSError/NetlinkError subclasses
            log.error("cannot follow network interfaces (netlink): %s", exc)
            self._ready.set()
            return
        self._ready.set()
        with ipr:
            while not self._stopping:
                try:
                    messages = ipr.get()
                except Exception as exc:  # netlink failed; the daemon keeps serving
                    log.error("stopped following network interfaces: %s", exc)
                    return
                for msg in messages:
                    event = msg.get("event")
                    if self._stopping or event not in ("RTM_NEWLINK", "RTM_DELLINK"):
                        continue
                    name = msg.get_attr("IFLA_IFNAME") or "?"
                    up = bool(msg.get("flags", 0) & IFF_UP)
                    self._on_event(name, int(msg.get("index", 0)), event == "RTM_NEWLINK", up)

    def stop(self) -> None:
        """No more events are delivered; the thread (a daemon thread) ends with the process."""
        self._stopping = True
