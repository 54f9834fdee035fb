"""What the hosts tell each other over CPG, as typed values (pure; their bytes: ``codec``).

Rules:
1. Versioned: every message is a JSON object ``{"v": VERSION, "kind": ..., ...}``; a message of
   another version or kind is refused with a reason, never guessed at.
2. Bounded: a message is at most ``MAX_MESSAGE`` bytes and every list and string in it has a
   limit, checked before anything is built from it, so a peer cannot make a host hold more
   than that.
3. Strict: a field of the wrong type, a UUID that is not one, a node id out of range is a
   ``BadMessage`` naming the problem; the caller drops it, counts it and logs it.
4. No key material: a device is named with its key's fingerprint (``Key.id``), never the key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from xvmd.backend import DomainState
from xvmd.protocol.wire import Op

VERSION = 1
MAX_MESSAGE = (1 << 20) - 4096
"""Bytes, as ``group.MAX_PAYLOAD``: an inventory of 2,000 domains takes about 200 KiB."""
MAX_DOMAINS = 8192
MAX_DEVICES = 256
MAX_TEXT = 1024
"""Bytes of UTF-8 in a name or a detail (libvirt names are far shorter)."""
MAX_NODEID = 0xFFFFFFFF


class BadMessage(ValueError):
    """A peer's message that cannot be used; the text says why (for the log and a counter)."""


@dataclass(frozen=True, slots=True)
class DeviceTag:
    """A fence device a host serves: its name and its key's fingerprint."""

    device: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class DomainRecord:
    name: str
    uuid: str
    state: DomainState

    @property
    def active(self) -> bool:
        """Anything but shut off may be running guest code: crashed and no-state included."""
        return self.state is not DomainState.SHUTOFF


@dataclass(frozen=True, slots=True)
class Departed:
    """A VM its sender last saw active on a host that has since left the group."""

    name: str
    uuid: str
    node: int


class ProofKind(enum.StrEnum):
    FENCED = "fenced"  # the host cluster's fencing completed an off or reboot of the host
    OPERATOR = "operator"  # an operator confirmed it (xvmd confirm-host-down)


@dataclass(frozen=True, slots=True)
class ProofRecord:
    """That host ``host`` is down: what proves it, in words for the log and `xvmd status`."""

    host: int
    kind: ProofKind
    detail: str


@dataclass(frozen=True, slots=True)
class Inventory:
    """One host's view of itself: who it is, what it serves, every domain of its hypervisor."""

    node: int
    name: str
    serial: int  # grows with each inventory the sender publishes
    devices: tuple[DeviceTag, ...]
    domains: tuple[DomainRecord, ...]
    departed: tuple[Departed, ...] = ()
    # Hosts its sender holds proven down, for `xvmd status` only: a proof is never taken from
    # an inventory (it may be stale news from a partition; see ``Table.membership``).
    proven: tuple[ProofRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """A request a host verified and would serve: the first claim delivered for a request
    decides who answers it, on every host alike (agreed order)."""

    origin: int
    fingerprint: str  # of the key that verified the request
    request: bytes  # the 176 bytes as received, so the responder can serve it
    domain: str  # the target the origin's policy mapped it to ("" for list, null, monitor)
    uuid_only: bool = False


@dataclass(frozen=True, slots=True)
class Forward:
    """Carry out ``op`` on ``domain`` on host ``to``, for a request ``origin`` authenticated."""

    ident: int  # chosen by the origin, unique among its forwards in flight
    origin: int
    to: int
    op: Op
    domain: str
    uuid_only: bool
    budget_ms: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What host ``node`` did for forward ``ident`` of ``origin``."""

    ident: int
    origin: int
    node: int
    result: int  # the result byte the client is to get
    detail: str


@dataclass(frozen=True, slots=True)
class Proof:
    """Host ``node`` found (or was given) proof that ``record.host`` is down."""

    node: int
    record: ProofRecord


@dataclass(frozen=True, slots=True)
class Done:
    """The responder of ``request`` (its fingerprint, hex) is done with it, however it went: a
    retransmit of the same bytes is a new round, decided afresh."""

    node: int
    request: str


@dataclass(frozen=True, slots=True)
class Sweep:
    """Before ``origin`` answers that a VM is not running, every member says whether its own
    hypervisor runs it, read when this message arrives (after the request did)."""

    ident: int  # chosen by the origin, unique among its sweeps in flight
    origin: int
    domain: str
    uuid_only: bool


class Seen(enum.StrEnum):
    """What a host's hypervisor said of a VM when a sweep asked."""

    ACTIVE = "active"  # anything but shut off: it may be running guest code
    INACTIVE = "inactive"  # shut off, or not defined there
    UNKNOWN = "unknown"  # the hypervisor could not be asked: it may be running


@dataclass(frozen=True, slots=True)
class Swept:
    """Host ``node``'s answer to sweep ``ident`` of ``origin``; ``detail`` says what its
    hypervisor said, or why it could not be asked."""

    ident: int
    origin: int
    node: int
    seen: Seen
    detail: str


Message = Inventory | Claim | Forward | Outcome | Done | Proof | Sweep | Swept
