"""This host's view of its corosync cluster: quorum and membership, event driven.

Rules:
1. ``QuorumStatus`` is a frozen value; a source replaces it on every change and the daemon
   reads ``current()`` on every request (nothing else keeps a copy).
2. Anything short of "connected to corosync, quorum provider present (QUORUM_SET), partition
   quorate" is not quorate, and ``reason`` says which, in words an operator can act on.
3. Only ``quorum/binding.py`` loads the corosync libraries (ctypes).

Layout: ``corotypes`` (corosync's constants, errors and values) and ``status`` (the status and
its log lines) are pure; ``binding`` is the ``CorosyncLibrary`` seam and its ctypes side;
``details`` reads the helper services; ``source`` is ``CorosyncQuorum``, the event-driven source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Member:
    nodeid: int
    name: str | None = None
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QuorumStatus:
    connected: bool
    quorate: bool
    reason: str  # why not quorate; "quorate" when it is
    quorum_set: bool = False  # a quorum provider is configured (QUORUM_SET)
    ring_id: tuple[int, int] | None = None  # (nodeid, seq)
    local_nodeid: int | None = None
    members: tuple[Member, ...] = ()
    expected_votes: int | None = None
    total_votes: int | None = None
    quorum: int | None = None
    changed_at: float = 0.0  # time.time() of the change that produced this status
    cluster_name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def member_ids(self) -> tuple[int, ...]:
        return tuple(m.nodeid for m in self.members)


NOT_CONNECTED = QuorumStatus(False, False, "not connected to corosync yet")


class QuorumSource(Protocol):
    """Follows the cluster; ``current()`` is the latest status (the daemon reads it per request).

    ``start``/``stop`` run on the daemon's event loop; neither blocks it nor raises.
    """

    def current(self) -> QuorumStatus: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
