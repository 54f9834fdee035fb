"""What each fence operation means, expressed over the primitive Backend calls.

Rules:
1. Blocking code, run in a worker thread; the clock and sleep are arguments so tests need no time.
2. Honest results: "off" and "reboot" answer success only when the domain was seen shut off (or
   gone), "on" only when it was seen running. A primitive that reports success is not proof.
3. Compatible with fence_virtd's libvirt backend everywhere else (docs/protocol.md, "Operations").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xvmd.backend import Backend, BackendError, BackendUnavailable, DomainInfo, DomainNotFound
from xvmd.backend import DomainState as S
from xvmd.protocol.wire import HostRecord, Op, Result

CONFIRM_TIMEOUT = 15.0
"""Seconds to wait for a domain to reach the state an operation promised."""
POLL_INTERVAL = 0.05

_RUNNING = (S.RUNNING, S.BLOCKED)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    detail: str
    domain: DomainInfo | None = None


@dataclass(frozen=True, slots=True)
class Clock:
    """Time for the blocking operations: ``now`` is monotonic seconds."""

    now: Callable[[], float]
    sleep: Callable[[float], None]


def resolve(
    backend: Backend, target: str, *, exact: bool = False, uuid_only: bool = False
) -> DomainInfo | None:
    """The domain a request names (matched as ``Backend.lookup`` says); None when there is
    none. An ambiguous target raises BackendError: it is not "absent"."""
    try:
        return backend.lookup(target, exact=exact, uuid_only=uuid_only)
    except DomainNotFound:
        return None


def host_records(backend: Backend) -> list[HostRecord]:
    return [HostRecord(d.name, d.uuid, int(d.state)) for d in backend.list_domains()]


def perform(
    backend: Backend,
    op: Op,
    dom: DomainInfo | None,
    clock: Clock,
    confirm_timeout: float = CONFIRM_TIMEOUT,
) -> Outcome:
    """Carry out ``op`` on the resolved domain ``dom`` (None: the request named no existing one).

    ``confirm_timeout`` bounds all waiting for states together (a reboot waits twice), so the
    answer comes within it plus the duration of the hypervisor calls themselves.
    Backend errors become FAIL outcomes with the reason in ``detail``.
    """
    deadline = _ConfirmWindow(clock, clock.now() + confirm_timeout)
    try:
        match op:
            case Op.NULL:
                # Both reference daemons answer failure to null; clients treat it as a no-op probe.
                return Outcome(Result.FAIL, "null operation")
            case Op.DEVSTATUS:
                backend.ping()
                return Outcome(Result.SUCCESS, f"{backend.description} reachable")
            case Op.STATUS:
                return _status(dom)
            case Op.OFF:
                return _off(backend, dom, deadline)
            case Op.ON:
                return _on(backend, dom, deadline)
            case Op.REBOOT:
                return _reboot(backend, dom, deadline)
            case _:
                return Outcome(Result.FAIL, f"{op.label} is not a per-domain operation")
    except BackendUnavailable as exc:
        return Outcome(Result.FAIL, f"hypervisor unavailable: {exc}", dom)
    except BackendError as exc:
        return Outcome(Result.FAIL, f"hypervisor error: {exc}", dom)


def _status(dom: DomainInfo | None) -> Outcome:
    if dom is None:
        return Outcome(Result.OFF, "no such domain")
    if dom.state is S.SHUTOFF:
        return Outcome(Result.OFF, "shut off", dom)
    # Paused or crashed domains still hold their memory and may resume: not fenced, so ON.
    return Outcome(Result.SUCCESS, dom.state.label, dom)


@dataclass(frozen=True, slots=True)
class _ConfirmWindow:
    clock: Clock
    at: float

    def expired(self) -> bool:
        return self.clock.now() >= self.at


def _wait_for(
    backend: Backend,
    dom: DomainInfo,
    done: Callable[[DomainInfo | None], bool],
    deadline: _ConfirmWindow,
) -> tuple[bool, DomainInfo | None]:
    while True:
        current = backend.state(dom.uuid)
        if done(current):
            return True, current
        if deadline.expired():
            return False, current
        deadline.clock.sleep(POLL_INTERVAL)


def _is_off(info: DomainInfo | None) -> bool:
    return info is None or info.state is S.SHUTOFF


def _is_running(info: DomainInfo | None) -> bool:
    return info is not None and info.state in _RUNNING


def _power_off(backend: Backend, dom: DomainInfo, deadline: _ConfirmWindow) -> Outcome | None:
    """Destroy and confirm. None on success, else the failing Outcome."""
    try:
        backend.destroy(dom.uuid)
    except BackendUnavailable:
        raise
    except BackendError as exc:
        # A racing shutdown also makes destroy fail; only the state tells what happened.
        current = backend.state(dom.uuid)
        if not _is_off(current):
            return Outcome(Result.FAIL, f"destroy failed: {exc}", dom)
    ok, current = _wait_for(backend, dom, _is_off, deadline)
    if not ok:
        state = current.state.label if current else "gone"
        return Outcome(Result.FAIL, f"still {state} after destroy (gave up waiting)", dom)
    return None


def _off(backend: Backend, dom: DomainInfo | None, deadline: _ConfirmWindow) -> Outcome:
    if dom is None:
        return Outcome(Result.FAIL, "no such domain")
    if dom.state is S.SHUTOFF:
        return Outcome(Result.SUCCESS, "already shut off", dom)
    failed = _power_off(backend, dom, deadline)
    return failed or Outcome(Result.SUCCESS, f"powered off (was {dom.state.label})", dom)


def _power_on(backend: Backend, dom: DomainInfo, deadline: _ConfirmWindow) -> Outcome:
    current = backend.state(dom.uuid)
    if _is_running(current):
        return Outcome(Result.SUCCESS, "already running", dom)
    try:
        if current is not None and current.state in (S.PAUSED, S.PMSUSPENDED):
            backend.resume(dom.uuid)
        elif current is None:
            return Outcome(Result.FAIL, "domain disappeared", dom)
        else:
            if current.state is not S.SHUTOFF:
                # Crashed or stuck shutting down: it must be off before it can boot again.
                failed = _power_off(backend, dom, deadline)
                if failed:
                    return failed
            backend.start(dom.uuid)
    except BackendUnavailable:
        raise
    except BackendError as exc:
        if not _is_running(backend.state(dom.uuid)):
            return Outcome(Result.FAIL, f"start failed: {exc}", dom)
    ok, current = _wait_for(backend, dom, _is_running, deadline)
    if not ok:
        state = current.state.label if current else "gone"
        return Outcome(Result.FAIL, f"still {state} after start (gave up waiting)", dom)
    return Outcome(Result.SUCCESS, "running", dom)


def _on(backend: Backend, dom: DomainInfo | None, deadline: _ConfirmWindow) -> Outcome:
    if dom is None:
        return Outcome(Result.FAIL, "no such domain")
    return _power_on(backend, dom, deadline)


def _reboot(backend: Backend, dom: DomainInfo | None, deadline: _ConfirmWindow) -> Outcome:
    if dom is None:
        return Outcome(Result.FAIL, "no such domain")
    if dom.state is S.SHUTOFF:
        # Already fenced; like fence_virtd we leave it off rather than boot a node the
        # cluster has just given up on.
        return Outcome(Result.SUCCESS, "already shut off; left off", dom)
    xml = None if dom.persistent else backend.definition(dom.uuid)
    failed = _power_off(backend, dom, deadline)
    if failed:
        return failed
    if xml is not None:
        try:
            backend.create_transient(xml)
        except BackendUnavailable:
            raise
        except BackendError as exc:
            return Outcome(Result.FAIL, f"powered off, but re-creating it failed: {exc}", dom)
        ok, _ = _wait_for(backend, dom, _is_running, deadline)
        if not ok:
            return Outcome(Result.FAIL, "powered off, but it did not come back", dom)
        return Outcome(Result.SUCCESS, "rebooted (transient domain re-created)", dom)
    restarted = _power_on(backend, dom, deadline)
    if restarted.result is not Result.SUCCESS:
        return Outcome(Result.FAIL, f"powered off, but {restarted.detail}", dom)
    return Outcome(Result.SUCCESS, "rebooted", dom)
