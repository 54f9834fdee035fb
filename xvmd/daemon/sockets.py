"""The multicast listeners, bound before anything else starts, and start-up errors an operator
can act on. Only the daemon's composition (``daemon.py``) and its front-end use this module.
"""

from __future__ import annotations

import errno
import logging
import socket

from xvmd.daemon.settings import ListenAddress, Settings
from xvmd.net import udp
from xvmd.net.iface import InterfaceError, interface_index

log = logging.getLogger("xvmd")


class StartupError(Exception):
    """The daemon cannot start; the message tells the operator why."""


def bind_error(what: str, exc: OSError) -> StartupError:
    """The start-up error for a listener that could not be opened."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"{what}: address already in use (is fence_virtd or another xvmd running?)"
        )
    if exc.errno == errno.ENODEV:
        return StartupError(
            f"{what}: no interface to join the group on (no multicast route); name one with -I"
        )
    if exc.errno == errno.EACCES:
        return StartupError(f"{what}: permission denied")
    return StartupError(f"{what}: {exc.strerror or exc}")


def open_sockets(settings: Settings) -> list[tuple[ListenAddress, socket.socket]]:
    """Bind every multicast listener. Raises StartupError."""
    try:
        ifindex = interface_index(settings.interface) if settings.interface else 0
    except InterfaceError as exc:
        raise StartupError(str(exc)) from None
    required, optional = settings.listeners()
    where = f" on {settings.interface}" if settings.interface else ""
    opened: list[tuple[ListenAddress, socket.socket]] = []
    try:
        for lst in required + optional:
            what = f"UDP {lst.group} port {lst.port}{where}"
            try:
                opened.append((lst, udp.open_multicast_socket(lst.group, lst.port, ifindex)))
            except OSError as exc:
                if lst in optional and exc.errno != errno.EADDRINUSE:
                    log.warning("not listening on %s: %s", what, exc.strerror or exc)
                    continue
                raise bind_error(what, exc) from None
    except StartupError:
        for _, sock in opened:
            sock.close()
        raise
    return opened
