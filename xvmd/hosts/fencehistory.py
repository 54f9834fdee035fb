"""Pacemaker's fencing history -> events, and the rule by which one proves a host down (pure).

The input is what ``stonith_admin --history NODE --verbose --output-as=xml`` prints (Pacemaker
2.1; schema xml/api/stonith_admin-2.15.rng and fence-event-2.15.rng, checked against real output
in fixtures/pacemaker/)::

    <pacemaker-result api-version="2.25" request="stonith_admin --history node3 ...">
      <list name="fencing history" count="1">
        <fence_event action="off" target="node3" client="stonith_admin.10698" origin="node1"
                     status="success" delegate="a human" completed="2026-12-06 17:01:05Z"/>
      </list>
      <status code="0" message="OK"/>
    </pacemaker-result>

Rules:
1. Pure: bytes in, values out; running stonith_admin is ``xvmd.daemon.pacemaker``'s job. The
   parser resolves no external entities, fetches nothing and builds no huge tree; a DOCTYPE
   (which stonith_admin never prints) is refused; past ``MAX_HISTORY_BYTES`` (or
   ``MAX_EVENTS`` events) the input is refused.
2. Strict: anything that is not a successful result holding one list of well-formed
   ``fence_event`` elements raises ``HistoryError`` with the reason (Pacemaker's own status
   message when it reports a failure), never another exception. A history we cannot read
   proves nothing; the caller treats it as "no proof".
3. ``status`` is ``success`` / ``failed`` / ``pending``; ``completed`` (only on success and
   failure) is local time with its offset, "YYYY-MM-DD HH:MM:SS" then "Z" or " +HH:MM"
   (newer Pacemaker may add ".ffffff"); it becomes epoch seconds. Each fencer stamps it with
   its own wall clock when it learns the result (fenced_remote.c ``finalize_op``); one that
   learned it from a peer's history, after a membership change, keeps the peer's stamp.
4. ``stonith_admin --confirm NODE`` is recorded as a successful ``off`` whose delegate is
   "a human" (fenced_remote.c); that is the one mark of a manual confirmation. A watchdog
   self-fencing assumed complete is a plain successful ``off``/``reboot``.

The proof rule (``proof_of_down``): the latest event that is
- of exactly ``host`` (case and all: Pacemaker's ``--history`` filter ignores case, we do not),
- an ``off`` or a ``reboot`` (an ``on``, i.e. unfencing, never proves anything),
- successful and completed (``failed`` and ``pending`` never count),
- completed at or after ``since`` (when the host left the membership): an older fencing is of
  an earlier life of the host. ``completed`` has whole seconds in Pacemaker 2.1 and is never
  rounded in the event's favour, so a fencing within the same second as ``since`` but shown
  before it does not count. ``since`` should come from the clock of the host whose fencer
  was asked (its stamp is then on the same clock, unless it came by a history sync).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from lxml import etree

MAX_HISTORY_BYTES: Final = 4 * 1024 * 1024  # the fencer keeps at most 500 events (~250 bytes)
MAX_EVENTS: Final = 10_000
MANUAL_DELEGATE: Final = "a human"
PROVING_ACTIONS: Final = frozenset({"off", "reboot"})
_REQUIRED: Final = ("action", "target", "client", "origin", "status")
_COMPLETED = re.compile(
    r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:(Z)|\s*([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)
_CODE = re.compile(r"-?[0-9]{1,9}", re.ASCII)


class HistoryError(ValueError):
    """The input is not a fencing history we can read (the message says why)."""


class EventState(enum.StrEnum):
    SUCCESS = "success"  # completed successfully
    FAILED = "failed"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class FencingEvent:
    target: str
    action: str  # "off", "reboot", "on" (unfencing), as Pacemaker names it
    state: EventState
    completed: float | None  # epoch seconds; None while pending
    delegate: str | None  # who carried it out ("a human" for --confirm)
    origin: str  # the node the request came from
    client: str  # e.g. "pacemaker-controld.1234", "stonith_admin.5678"
    manual: bool = False  # stonith_admin --confirm (rule 4)
    exit_reason: str | None = None

    def describe(self) -> str:
        """One line for logs and status: what happened to whom, by whom, when."""
        by = "confirmed by a human" if self.manual else f"by {self.delegate or 'unknown'}"
        when = "" if self.completed is None else f" at {_utc(self.completed)}"
        return (
            f"{self.action} of {self.target} {self.state.value} {by}"
            f" (requested by {self.client} on {self.origin}){when}"
        )


def _utc(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # past year 9999 UTC: still say something
        return f"{epoch:.0f} s after the epoch"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False
    )


def parse_history(xml: bytes) -> list[FencingEvent]:
    """The events of one ``stonith_admin --history --output-as=xml`` answer, newest first as
    Pacemaker prints them. Raises HistoryError for anything else (rule 2)."""
    root = _result(xml)
    error = _reported(root)
    if error is not None:
        raise HistoryError(error)
    lists = [c for c in root if c.tag == "list"]
    if len(lists) != 1:
        raise HistoryError(f"expected one <list> of fencing events, found {len(lists)}")
    return _events(lists[0])


def reported_error(xml: bytes) -> str | None:
    """The failure Pacemaker reports in a result (its status message and errors), or None
    when it reports success or the input is no result at all."""
    try:
        return _reported(_result(xml))
    except HistoryError:
        return None


def _result(xml: bytes) -> etree._Element:
    if len(xml) > MAX_HISTORY_BYTES:
        raise HistoryError(f"history larger than {MAX_HISTORY_BYTES} bytes")
    try:
        root = etree.fromstring(xml, _parser())
    except (etree.LxmlError, ValueError, LookupError) as e:
        raise HistoryError(f"not XML: {e}") from None
    info: Any = root.getroottree().docinfo  # lxml-stubs lack DocInfo.doctype
    if info.doctype:
        raise HistoryError("a DOCTYPE (stonith_admin never prints one)")
    if root.tag != "pacemaker-result":
        raise HistoryError(f"expected <pacemaker-result>, got {_shown(root)}")
    return root


def _shown(element: etree._Element) -> str:
    tag = element.tag if isinstance(element.tag, str) else "a processing instruction"
    return f"<{tag[:40]}>"


def _reported(root: etree._Element) -> str | None:
    """Pacemaker's verdict on the command: None for code 0, else its message."""
    status = root.find("status")
    if status is None:
        raise HistoryError("no <status> in the result")
    code = status.get("code", "")
    if not _CODE.fullmatch(code):
        raise HistoryError(f"status code {code[:20]!r} is not a number")
    if int(code) == 0:
        return None
    errors = [e.text.strip() for e in status.iterfind("errors/error") if e.text]
    detail = "; ".join([status.get("message") or "", *errors[:3]]).strip("; ")
    return f"Pacemaker reported error {int(code)}: {detail[:400]}"


def _events(element: etree._Element) -> list[FencingEvent]:
    children = [c for c in element if isinstance(c.tag, str)]
    if len(children) > MAX_EVENTS:
        raise HistoryError(f"more than {MAX_EVENTS} events")
    events = []
    for child in children:
        if child.tag != "fence_event":
            raise HistoryError(f"unexpected {_shown(child)} in the fencing history")
        events.append(_event(child))
    count = element.get("count")
    if count is not None and (not _COUNT.fullmatch(count) or int(count) != len(events)):
        raise HistoryError(f"list count {count[:20]!r} but {len(events)} events")
    return events


def _event(e: etree._Element) -> FencingEvent:
    missing = [name for name in _REQUIRED if e.get(name) is None]
    if missing:
        raise HistoryError(f"fence_event without {', '.join(missing)}")
    status = e.get("status", "")
    try:
        state = EventState(status)
    except ValueError:
        raise HistoryError(f"fence_event status {status[:20]!r} is not known") from None
    raw = e.get("completed")
    completed = None if raw is None else parse_completed(raw)
    delegate = e.get("delegate")
    return FencingEvent(
        target=e.get("target", ""),
        action=e.get("action", ""),
        state=state,
        completed=completed,
        delegate=delegate,
        origin=e.get("origin", ""),
        client=e.get("client", ""),
        manual=delegate == MANUAL_DELEGATE,
        exit_reason=e.get("exit-reason"),
    )


def parse_completed(text: str) -> float:
    """Pacemaker's completion time (rule 3) -> epoch seconds; HistoryError if malformed."""
    m = _COMPLETED.fullmatch(text.strip())
    if m is None:
        raise HistoryError(f"completed time {text[:40]!r} is not understood")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    fraction = m.group(7) or "0"
    if m.group(8):
        offset = timedelta(0)
    else:
        sign = -1 if m.group(9) == "-" else 1
        offset = sign * timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
    try:
        zone = timezone(offset)
        when = datetime(year, month, day, hour, minute, second, tzinfo=zone)
        return when.timestamp() + int(fraction.ljust(9, "0")) / 1e9
    except (ValueError, OverflowError) as e:
        raise HistoryError(f"completed time {text[:40]!r}: {e}") from None


def proves_down(event: FencingEvent, host: str, since: float) -> bool:
    """Whether ``event`` alone proves ``host`` down since ``since`` (the module's rule)."""
    return (
        event.target == host
        and event.action in PROVING_ACTIONS
        and event.state is EventState.SUCCESS
        and event.completed is not None
        and event.completed >= since
    )


def proof_of_down(events: Iterable[FencingEvent], host: str, since: float) -> FencingEvent | None:
    """The latest event proving ``host`` down since ``since``, or None (see the module doc)."""
    proofs = [e for e in events if proves_down(e, host, since)]
    return max(proofs, key=lambda e: e.completed or 0.0, default=None)
