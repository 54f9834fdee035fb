"""The hypervisor seam: the few primitive calls fencing needs, and their errors.

Rules:
1. Implementations are synchronous and may block; the daemon calls them from worker threads only.
2. Only ``backend/libvirt.py`` (and its ``libvirt_events.py``) import libvirt. Foreign exceptions
   become ``BackendError``s at the boundary, so everything above speaks one error language.
3. Fencing semantics (what "off" means, how long to wait) live in ``xvmd.core.operations``,
   not here.
4. ``watch`` and ``unwatch`` block like every other call (run them in the worker pool); the
   ``changed`` callback they take comes from any thread and must only hand the news on (e.g.
   ``loop.call_soon_threadsafe``), never call back into the backend.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def is_uuid(text: str) -> bool:
    """True when ``text`` has the canonical 8-4-4-4-12 UUID form (any case)."""
    return _UUID_RE.match(text) is not None


class DomainState(enum.IntEnum):
    """libvirt's ``virDomainState``; the hostlist carries these raw values."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7

    @classmethod
    def of(cls, value: int) -> DomainState:
        try:
            return cls(value)
        except ValueError:
            return cls.NOSTATE

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class DomainInfo:
    name: str
    uuid: str
    state: DomainState
    persistent: bool = True


class BackendError(Exception):
    """A hypervisor call failed."""


class DomainNotFound(BackendError):
    """No domain has that name or UUID."""


class AmbiguousDomain(BackendError):
    """The target names more than one domain: acting on either could hit the wrong guest."""


def exact_match(target: str, named: DomainInfo | None, by_uuid: DomainInfo | None) -> DomainInfo:
    """The rule of an exact lookup, for every backend: the domain named exactly ``target`` or the
    one whose UUID it is; both but different ones is ambiguous, never a guess between them."""
    if named is not None and by_uuid is not None and named.uuid.lower() != by_uuid.uuid.lower():
        raise AmbiguousDomain(
            f"VM {target!r} is ambiguous: the name of domain {named.name} "
            f"and the UUID of domain {by_uuid.name}"
        )
    found = named or by_uuid
    if found is None:
        raise DomainNotFound(f"no domain named {target!r}")
    return found


def match(
    domains: Iterable[DomainInfo], target: str, *, exact: bool = False, uuid_only: bool = False
) -> DomainInfo:
    """``Backend.lookup``'s rules over a list of domains: by UUID when ``target`` has UUID form
    (and not ``exact``) or ``uuid_only``; ``exact``: the exact name or the UUID, never both
    meaning two domains; else the exact name, then a unique case-insensitive one. Raises
    DomainNotFound or AmbiguousDomain."""
    listed = list(domains)
    by_uuid = None
    if is_uuid(target):
        wanted = target.lower()
        by_uuid = next((d for d in listed if d.uuid.lower() == wanted), None)
    if uuid_only or (is_uuid(target) and not exact):
        if by_uuid is None:
            raise DomainNotFound(f"no domain with uuid {target}")
        return by_uuid
    named = next((d for d in listed if d.name == target), None)
    if exact:
        return exact_match(target, named, by_uuid)
    if named is not None:
        return named
    folded = target.casefold()
    hits = [d for d in listed if d.name.casefold() == folded]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise AmbiguousDomain(f"{target!r} is ambiguous")
    raise DomainNotFound(f"no domain named {target!r}")


class BackendUnavailable(BackendError):
    """The hypervisor cannot be reached right now; a reconnect is under way."""


class Backend(Protocol):
    """Primitive, blocking hypervisor calls. Domains are addressed by UUID after lookup."""

    description: str

    def ping(self) -> None:
        """Make a real round trip to the hypervisor. Raises BackendUnavailable."""

    def list_domains(self) -> list[DomainInfo]:
        """Every domain, active or not."""

    def lookup(self, target: str, *, exact: bool = False, uuid_only: bool = False) -> DomainInfo:
        """Find one domain; raises DomainNotFound, or BackendError when ``target`` is ambiguous.

        Default (no cluster.conf): by UUID when ``target`` has UUID form, else by exact name,
        else by a unique case-insensitive name match. ``exact``: by exact name, and by UUID too
        when ``target`` has UUID form; a name and a UUID naming two domains is ambiguous.
        ``uuid_only``: by UUID alone (a ``target`` without UUID form finds nothing).
        """

    def state(self, uuid: str) -> DomainInfo | None:
        """Current info, or None when the domain no longer exists (a destroyed transient one)."""

    def destroy(self, uuid: str) -> None:
        """Hard power-off."""

    def start(self, uuid: str) -> None:
        """Boot a defined, shut-off domain."""

    def resume(self, uuid: str) -> None:
        """Resume a paused domain (or wake a suspended one)."""

    def definition(self, uuid: str) -> str:
        """The domain's XML, secure parts included, to re-create a transient domain."""

    def create_transient(self, xml: str) -> None:
        """Start a domain from XML (how a destroyed transient domain comes back)."""

    def check_connection(self) -> bool:
        """Re-open a lost connection if needed; True when connected. Never raises."""

    def watch(self, changed: Callable[[], None]) -> bool:
        """From now on call ``changed()`` whenever a domain may have changed (defined, undefined,
        started, stopped, crashed, suspended, resumed, migrated, pmsuspended), and once after
        events may have been missed (a lost event connection re-opened by ``check_connection``).

        ``changed`` runs in a thread of the backend's (not the caller's loop), must return at
        once and may be called in bursts: the caller marshals it onto its loop and coalesces.
        A second ``watch`` replaces the callback. Returns False when the hypervisor cannot
        deliver events: the caller then polls ``list_domains`` (at least every 2 s). One that
        is unreachable right now is not "cannot": True, and ``check_connection`` subscribes
        (and calls ``changed`` once) when it is back. Blocks; never raises.
        """

    def unwatch(self) -> None:
        """Stop calling ``changed``: not called again once this returns. Idempotent; blocks."""

    def watching(self) -> bool:
        """Whether events flow right now: subscribed, and the event connection not known to be
        lost. Answers at once (no hypervisor call): the caller asks on its event loop."""

    def close(self) -> None:
        """Drop the connection (and stop watching)."""
