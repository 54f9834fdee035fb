"""This host's view of its corosync cluster: quorum and membership, event driven.

Rules:
1. ``QuorumStatus`` is a frozen value; a source publishes a new one on every change and the
   daemon reads ``current()`` on every request (no caching beyond the latest callback).
2. Anything short of "connected to corosync, quorum provider present (QUORUM_SET), partition
   quorate" is not quorate, and ``reason`` says which, in words an operator can act on.
3. Only ``quorum/corosync.py`` loads the corosync libraries.
"""

from __future__ import annotations

from collections.abc import Callable
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

Listener = Callable[[QuorumStatus], None]


class QuorumSource(Protocol):
    """Publishes QuorumStatus changes. ``start``/``stop`` run on the daemon's event loop."""

    def current(self) -> QuorumStatus: ...

    def subscribe(self, listener: Listener) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
