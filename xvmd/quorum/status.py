"""The ``QuorumStatus`` a corosync session's values make, and what to tell the operator.

Pure: no ctypes, no event loop, no clock, no I/O; the source (``source.py``) collects an
``Observation`` and the time, and calls in here for

- the judgement: ``build_status`` (quorate, or why not) and ``disconnected_status``;
- the operator texts: the ``REASON_*`` strings, ``connect_failure_reason`` and
  ``transition_message`` (the one log line per change, never one per retry);
- ``Backoff``, the reconnect delays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from xvmd.quorum import Member, QuorumStatus
from xvmd.quorum.corotypes import (
    CS_ERR_ACCESS,
    CS_ERR_LIBRARY,
    CS_ERR_SECURITY,
    QUORUM_SET,
    ClusterConfig,
    VoteInfo,
    cs_error_name,
    vote_flag_words,
)

# --- reasons (operator language; tests match on them) ----------------------------------------

REASON_QUORATE = "quorate"
REASON_NO_LIBRARIES = "corosync libraries not found (install corosync)"
REASON_QUORUM_FREE = "corosync has no quorum provider (QUORUM_FREE): fencing refused"
REASON_LOST = "corosync is not running (lost connection); reconnecting"
REASON_STOPPED = "not following corosync (quorum tracking stopped)"


def connect_failure_reason(code: int, was_connected: bool) -> str:
    """Why we are not connected, after ``quorum_initialize`` (or a later step) failed."""
    if code == CS_ERR_LIBRARY:
        if was_connected:
            return REASON_LOST
        return "corosync is not running (cannot connect: CS_ERR_LIBRARY); retrying"
    if code in (CS_ERR_ACCESS, CS_ERR_SECURITY):
        return (
            f"corosync refused the connection ({cs_error_name(code)}): run xvmd as root or "
            "allow its user in a corosync uidgid entry; retrying"
        )
    return f"cannot connect to corosync ({cs_error_name(code)}); retrying"


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything one refresh learnt, raw; ``build_status`` turns it into a ``QuorumStatus``."""

    quorum_type: int
    quorate: bool
    ring_seq: int | None = None
    view: tuple[int, ...] | None = None  # None: no notification yet
    vote: VoteInfo | None = None
    cluster: ClusterConfig | None = None
    addresses: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    local_nodeid: int | None = None


# --- the status --------------------------------------------------------------------------------


def not_quorate_reason(vote: VoteInfo | None) -> str:
    if vote is None or not vote.quorum:
        return "this partition is not quorate: fencing refused"
    return (
        f"this partition is not quorate ({vote.total_votes} of {vote.expected_votes} expected "
        f"votes, {vote.quorum} needed): fencing refused"
    )


def build_status(obs: Observation, now: float) -> QuorumStatus:
    """A connected session's raw values -> the published status (connected is True here).

    Quorate needs all three: QUORUM_SET, the quorum service saying quorate, and a
    non-empty view (an empty view is corosync starting up, as pacemaker also treats it).
    ``ring_id`` is (lowest member id, ring seq): the v0 callback carries only the seq, and totem
    makes the lowest node id of the new membership its representative.
    """
    view = tuple(sorted(set(obs.view or ())))
    quorate, reason = _judge(obs, view)
    vote = obs.vote
    extra: dict[str, str] = {}
    if vote is not None:
        extra["votequorum_flags"] = vote_flag_words(vote.flags)
        extra["highest_expected"] = str(vote.highest_expected)
    return QuorumStatus(
        connected=True,
        quorate=quorate,
        reason=reason,
        quorum_set=obs.quorum_type == QUORUM_SET,
        ring_id=(view[0], obs.ring_seq) if view and obs.ring_seq is not None else None,
        local_nodeid=_local_nodeid(obs),
        members=_members(obs, view),
        expected_votes=vote.expected_votes if vote else None,
        total_votes=vote.total_votes if vote else None,
        quorum=vote.quorum if vote else None,
        changed_at=now,
        cluster_name=obs.cluster.name if obs.cluster else None,
        extra=extra,
    )


def _judge(obs: Observation, view: tuple[int, ...]) -> tuple[bool, str]:
    """(quorate, reason) of a connected session."""
    if obs.quorum_type != QUORUM_SET:
        return False, REASON_QUORUM_FREE
    if not obs.quorate:
        return False, not_quorate_reason(obs.vote)
    if not view:
        return False, "corosync reports quorum but no membership yet: fencing refused until it does"
    return True, REASON_QUORATE


def _members(obs: Observation, view: tuple[int, ...]) -> tuple[Member, ...]:
    """The view's nodes with their configured names; libcfg's addresses, else the ring ones."""
    nodes = {n.nodeid: n for n in obs.cluster.nodes if n.nodeid} if obs.cluster else {}
    members = []
    for nodeid in view:
        conf = nodes.get(nodeid)
        addrs = obs.addresses.get(nodeid) or (conf.ring_addrs if conf else ())
        members.append(Member(nodeid, conf.name if conf else None, tuple(addrs)))
    return tuple(members)


def _local_nodeid(obs: Observation) -> int | None:
    """libcfg's answer, else votequorum's, else the nodelist position's."""
    if obs.local_nodeid is not None:
        return obs.local_nodeid
    if obs.vote is not None and obs.vote.node_id:
        return obs.vote.node_id
    return obs.cluster.local_nodeid if obs.cluster else None


def disconnected_status(
    reason: str, now: float, previous: QuorumStatus | None = None
) -> QuorumStatus:
    """Not connected, not quorate; keeps the cluster name and local id for the operator."""
    return QuorumStatus(
        connected=False,
        quorate=False,
        reason=reason,
        local_nodeid=previous.local_nodeid if previous else None,
        cluster_name=previous.cluster_name if previous else None,
        changed_at=now,
    )


def same_status(a: QuorumStatus, b: QuorumStatus) -> bool:
    """Equal apart from ``changed_at``."""
    return replace(a, changed_at=0.0) == replace(b, changed_at=0.0)


# --- what gets logged ------------------------------------------------------------------------


def describe_members(status: QuorumStatus) -> str:
    if not status.members:
        return "no members"
    names = ", ".join(f"{m.nodeid} ({m.name})" if m.name else str(m.nodeid) for m in status.members)
    count = len(status.members)
    return f"{count} member{'s' if count != 1 else ''}: {names}"


def _state_key(status: QuorumStatus) -> tuple[bool, bool, bool, str]:
    # While connected, the reason only details the state (vote counts); while not connected it
    # is the state (not running, access denied, no libraries, stopped).
    detail = "" if status.connected else status.reason
    return status.connected, status.quorate, status.quorum_set, detail


def transition_message(old: QuorumStatus, new: QuorumStatus) -> tuple[int, str] | None:
    """The log line (level, text) for a status change, or None when nothing worth saying changed.

    Each change of connected/quorate is logged once (never per retry: the reason stays the
    same while a reconnect keeps failing); membership changes at INFO.
    """
    name = f"corosync cluster {new.cluster_name}" if new.cluster_name else "the corosync cluster"
    members = describe_members(new)
    if _state_key(old) != _state_key(new):
        return _state_message(new, name, members)
    if old.member_ids != new.member_ids:
        state = "quorate" if new.quorate else "not quorate"
        return logging.INFO, f"{name} membership changed, {state} ({members})"
    return None


def _state_message(new: QuorumStatus, name: str, members: str) -> tuple[int, str]:
    """The log line for a new connected/quorate state."""
    if new.quorate:
        votes = ""
        if new.total_votes is not None:
            votes = f", {new.total_votes}/{new.expected_votes} votes, quorum {new.quorum}"
        return logging.INFO, f"{name} is quorate ({members}{votes})"
    if not new.connected:
        if new.reason == REASON_STOPPED:
            return logging.INFO, new.reason
        if new.reason == REASON_NO_LIBRARIES:
            return logging.ERROR, f"{new.reason}: fencing refused"
        return logging.WARNING, f"{new.reason} (fencing refused meanwhile)"
    if not new.quorum_set:
        return logging.ERROR, new.reason
    return logging.WARNING, f"{name}: {new.reason} ({members})"


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset`` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial
