"""The daemon's settings: one frozen snapshot, built once from the command line."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ccs.model import DEFAULT_KEY_FILE as DEFAULT_KEY_FILE  # one definition, ccs owns it
from xvmd.protocol.wire import HashType

DEFAULT_IPV4_GROUP = "225.0.0.12"
DEFAULT_IPV6_GROUP = "ff05::3:1"
DEFAULT_PORT = 1229
DEFAULT_URI = "qemu:///system"
DEFAULT_TCP_ADDRESS = "127.0.0.1"


class SettingsError(ValueError):
    """A combination of settings that cannot work; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    group: str
    port: int

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.group).version


@dataclass(frozen=True, slots=True)
class Settings:
    key_file: str = DEFAULT_KEY_FILE  # --no-ccs only
    interface: str | None = None
    address: str | None = None
    port: int = DEFAULT_PORT
    family: str = "auto"
    uri: str = DEFAULT_URI
    hash: HashType = HashType.SHA256
    auth: HashType = HashType.SHA256
    debug: int = 0
    tcp: tuple[str, int] | None = None
    metrics: tuple[str, int] | None = None  # --metrics: the Prometheus endpoint (None: off)
    local: bool = False
    no_ccs: bool = False
    config: str | None = None  # cluster.conf or CIB export path; None with --no-ccs
    corosync: str | None = None  # with a CIB export: its corosync.conf (None: beside it)
    devices: tuple[str, ...] | None = None  # -D selections
    instance: str | None = None  # --instance: names this daemon among several on one host
    # `xvmd status` reads this socket; None: off. The command line derives the default from
    # the instance or the port (paths.instance_paths), so it is never a constant here.
    control: str | None = None
    audit: str | None = None  # the audit trail; None: off
    # Where cluster VMs were last seen (several hosts); None: kept in memory only.
    state: str | None = None
    # Sessions (connections) at once; beyond it datagrams are dropped as busy and clients
    # retransmit. 128 leaves room for 64 clients in flight while answered sessions close.
    max_sessions: int = 128
    workers: int = 32

    @property
    def needs_key(self) -> bool:
        return self.hash is not HashType.NONE or self.auth is not HashType.NONE

    def listeners(self) -> tuple[list[ListenAddress], list[ListenAddress]]:
        """(required, optional) multicast listeners.

        With ``-i auto`` and no ``-a`` the daemon serves both default groups; the IPv6 one is
        optional there, so a host without IPv6 still starts.

        Raises:
            SettingsError: the address is not a multicast group of the chosen family.
        """
        if self.address is None:
            if self.family == "ipv4":
                return [ListenAddress(DEFAULT_IPV4_GROUP, self.port)], []
            if self.family == "ipv6":
                return [ListenAddress(DEFAULT_IPV6_GROUP, self.port)], []
            return [ListenAddress(DEFAULT_IPV4_GROUP, self.port)], [
                ListenAddress(DEFAULT_IPV6_GROUP, self.port)
            ]
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            raise SettingsError(f"{self.address!r} is not an IP address") from None
        if not ip.is_multicast:
            raise SettingsError(
                f"{self.address} is not a multicast group (unicast to the port is served anyway)"
            )
        wanted = {"ipv4": 4, "ipv6": 6}.get(self.family)
        if wanted is not None and ip.version != wanted:
            raise SettingsError(f"{self.address} is not an {self.family} address")
        return [ListenAddress(str(ip), self.port)], []


def parse_endpoint(text: str, default_port: int, option: str = "--tcp") -> tuple[str, int]:
    """Parse ``--tcp`` or ``--metrics [ADDR][:PORT]``: ``''``, ``:1230``, ``10.0.0.1``,
    ``[::1]:1230``, ``::1``; the address defaults to 127.0.0.1.

    Raises:
        SettingsError: unparseable address or port.
    """
    host, port_text = DEFAULT_TCP_ADDRESS, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SettingsError(f"{option} {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SettingsError(f"{option} {text!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host_part, port_text = text.split(":")
        host = host_part or DEFAULT_TCP_ADDRESS
    elif text:
        host = text
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SettingsError(f"{option}: {host!r} is not an IP address") from None
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise SettingsError(f"{option}: port {port_text!r} is not in 1..65535")
        port = int(port_text)
    return host, port


def parse_tcp(text: str, default_port: int) -> tuple[str, int]:
    return parse_endpoint(text, default_port, "--tcp")
