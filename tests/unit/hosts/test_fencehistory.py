"""Pacemaker's fencing history and the proof-of-down rule, on real captured output
(fixtures/pacemaker/, see its README) and on variants derived from it by hand."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.harness import FIXTURES
from xvmd.hosts.fencehistory import (
    MAX_HISTORY_BYTES,
    EventState,
    FencingEvent,
    HistoryError,
    parse_completed,
    parse_history,
    proof_of_down,
    proves_down,
    reported_error,
)

PACEMAKER = FIXTURES / "pacemaker"
# node3 was killed at these instants in the captured session (fixtures/pacemaker/README.md)
SINCE_FIRST = 1796576782.4521396
SINCE_SECOND = 1796576790.3578343


def load(name: str) -> list[FencingEvent]:
    return parse_history((PACEMAKER / name).read_bytes())


def utc(hour: int, minute: int, second: int) -> float:
    return datetime(2026, 12, 6, hour, minute, second, tzinfo=UTC).timestamp()


# -- captured -----------------------------------------------------------------------------------


def test_an_empty_history_proves_nothing() -> None:
    assert load("history-empty.xml") == []
    assert proof_of_down([], "node3", 0.0) is None


def test_a_confirmation_is_a_manual_successful_off() -> None:
    events = load("history-confirmed.xml")
    assert [(e.action, e.state) for e in events] == [
        ("off", EventState.SUCCESS),
        ("on", EventState.FAILED),
        ("off", EventState.FAILED),
    ]
    confirm = events[0]
    assert confirm == FencingEvent(
        target="node3",
        action="off",
        state=EventState.SUCCESS,
        completed=utc(17, 6, 26),
        delegate="a human",
        origin="node1",
        client="stonith_admin.17475",
        manual=True,
    )
    assert proof_of_down(events, "node3", SINCE_FIRST) == confirm
    assert not any(e.manual for e in events[1:])


@pytest.mark.parametrize("name", ["history-confirmed-berlin.xml", "history-confirmed-new-york.xml"])
def test_local_time_with_its_offset_is_the_same_instant(name: str) -> None:
    assert load(name) == load("history-confirmed.xml")


def test_failed_attempts_prove_nothing() -> None:
    events = load("history-failed.xml")
    assert {(e.action, e.state) for e in events} == {
        ("off", EventState.FAILED),
        ("on", EventState.FAILED),
    }
    assert all(e.completed == utc(17, 6, 22) and e.delegate is None for e in events)
    assert proof_of_down(events, "node3", 0.0) is None


def test_only_a_fencing_after_since_counts() -> None:
    events = load("history-two-confirmations.xml")
    newer, older = events[0], events[1]
    assert newer.manual and older.manual and newer.completed == utc(17, 6, 34)
    assert proof_of_down(events, "node3", SINCE_SECOND) == newer
    assert proof_of_down(events, "node3", SINCE_FIRST) == newer  # the latest of several
    assert proof_of_down(events[1:], "node3", SINCE_FIRST) == older
    # the older confirmation was of node3's previous life: not proof of its second death
    assert proof_of_down(events[1:], "node3", SINCE_SECOND) is None


def test_whole_seconds_are_never_rounded_in_the_events_favour() -> None:
    confirm = load("history-confirmed.xml")[0]
    assert confirm.completed is not None
    assert proof_of_down([confirm], "node3", confirm.completed) == confirm
    assert proof_of_down([confirm], "node3", confirm.completed + 0.5) is None


def test_without_verbose_stonith_admin_shows_the_older_success_only() -> None:
    """Why the edge passes --verbose: Pacemaker 2.1.5 then prints the oldest success."""
    events = load("history-two-confirmations-not-verbose.xml")
    assert len(events) == 1 and events[0].completed == utc(17, 6, 26)
    assert proof_of_down(events, "node3", SINCE_SECOND) is None


def test_with_broadcast_the_answer_is_always_empty() -> None:
    assert load("history-broadcast.xml") == []


def test_no_fencer_is_an_error_with_pacemakers_message() -> None:
    xml = (PACEMAKER / "no-fencer.xml").read_bytes()
    with pytest.raises(HistoryError, match="102: Not connected; Could not connect to fencer"):
        parse_history(xml)
    assert reported_error(xml) == (
        "Pacemaker reported error 102: Not connected; "
        "Could not connect to fencer: Transport endpoint is not connected"
    )
    assert reported_error((PACEMAKER / "history-confirmed.xml").read_bytes()) is None
    assert reported_error(b"garbage") is None


# -- derived ------------------------------------------------------------------------------------


def test_a_successful_on_never_proves_down() -> None:
    events = load("derived-on-success.xml")
    assert events[0].action == "on" and events[0].state is EventState.SUCCESS
    assert proof_of_down(events, "node3", 0.0) is None


def test_pending_operations_prove_nothing() -> None:
    events = load("derived-pending.xml")
    assert [e.state for e in events] == [EventState.PENDING, EventState.PENDING, EventState.FAILED]
    assert events[0].completed is None and events[1].completed is None
    assert proof_of_down(events, "node3", 0.0) is None


def test_only_exactly_the_host_counts() -> None:
    events = load("derived-other-targets.xml")
    assert proof_of_down(events, "node3", 0.0) is None
    assert proof_of_down(events, "NODE3", 0.0) == events[0]
    assert proof_of_down(events, "node3.example.com", 0.0) == events[2]


def test_a_reboot_counts_with_or_without_a_delegate() -> None:
    watchdog, device, failed = load("derived-reboot.xml")
    assert watchdog.delegate is None and not watchdog.manual
    assert proof_of_down([device, failed], "node3", 0.0) == device
    assert proof_of_down([device, watchdog, failed], "node3", 0.0) == watchdog  # the latest
    assert failed.exit_reason == "Fence agent did not complete in time"
    assert proof_of_down([failed], "node3", 0.0) is None


def test_describe_says_what_who_and_when() -> None:
    confirm, failed_on, _ = load("history-confirmed.xml")
    assert confirm.describe() == (
        "off of node3 success confirmed by a human "
        "(requested by stonith_admin.17475 on node1) at 2026-12-06 17:06:26Z"
    )
    assert failed_on.describe().startswith("on of node3 failed by unknown")
    late = dataclasses.replace(confirm, completed=parse_completed("9999-12-31 23:59:59 -23:59"))
    assert late.describe().endswith("s after the epoch")


def test_events_are_frozen() -> None:
    event = load("history-confirmed.xml")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.target = "node1"  # type: ignore[misc]


# -- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-06 17:06:26Z", utc(17, 6, 26)),
        ("2026-12-06 18:06:26 +01:00", utc(17, 6, 26)),
        ("2026-12-06 12:06:26 -05:00", utc(17, 6, 26)),
        ("2026-12-06 17:06:26 +00:00", utc(17, 6, 26)),
        ("2026-12-06 17:06:26.250000Z", utc(17, 6, 26) + 0.25),  # newer Pacemaker: microseconds
        ("2026-12-06 22:36:26.5 +05:30", utc(17, 6, 26) + 0.5),
        ("1970-01-01 00:00:00Z", 0.0),
    ],
)
def test_completed_times(text: str, expected: float) -> None:
    assert parse_completed(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-12-06 17:06:26",  # no zone: which instant?
        "2026-12-06T17:06:26Z",
        "2026-13-06 17:06:26Z",
        "2026-02-30 17:06:26Z",
        "2026-12-06 24:06:26Z",
        "2026-12-06 17:06:26 +24:00",
        "0000-01-01 00:00:00Z",
        "\uff12\uff10\uff12\uff16-12-06 17:06:26Z",  # fullwidth digits
        "1796576786",
    ],
)
def test_malformed_completed_times_are_history_errors(text: str) -> None:
    with pytest.raises(HistoryError, match="completed time"):
        parse_completed(text)


# -- malformed documents ------------------------------------------------------------------------

EVENT = (
    '<fence_event action="off" target="node3" client="c" origin="node1" status="success"'
    ' completed="2026-12-06 17:06:26Z"/>'
)


def doc(body: str, status: str = '<status code="0" message="OK"/>') -> bytes:
    return f"<pacemaker-result>{body}{status}</pacemaker-result>".encode()


@pytest.mark.parametrize(
    ("xml", "why"),
    [
        (b"", "not XML"),
        (b"Could not connect", "not XML"),
        (b"<pacemaker-result>", "not XML"),
        (b"<crm_mon/>", "expected <pacemaker-result>"),
        (doc(f'<list count="1">{EVENT}</list>', status=""), "no <status>"),
        (doc("<list/>", '<status code="x"/>'), "is not a number"),
        (doc("<list/>", '<status code="124" message="Timeout"/>'), "error 124: Timeout"),
        (doc(""), "found 0"),
        (doc("<list/><list/>"), "found 2"),
        (doc(f'<list count="2">{EVENT}</list>'), "list count '2' but 1 events"),
        (doc(f'<list count="-1">{EVENT}</list>'), "list count"),
        (doc(f"<list>{EVENT}<item/></list>"), "unexpected <item>"),
        (doc(f"<list>{EVENT.replace('target=', 'tar=')}</list>"), "without target"),
        (doc(f"<list>{EVENT.replace('success', 'done')}</list>"), "status 'done' is not known"),
        (doc(f"<list>{EVENT.replace('17:06:26Z', 'soon')}</list>"), "'2026-12-06 soon'"),
        (b'<!DOCTYPE r [<!ENTITY x "node3">]>' + doc("<list/>"), "DOCTYPE"),
        (
            b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
            + doc(f"<list>{EVENT.replace('node3', '&x;')}</list>"),
            "external entity",
        ),
        (b" " * (MAX_HISTORY_BYTES + 1), "larger than"),
    ],
)
def test_malformed_histories_are_history_errors(xml: bytes, why: str) -> None:
    with pytest.raises(HistoryError, match=why):
        parse_history(xml)


def test_unknown_attributes_and_comments_are_ignored() -> None:
    xml = doc(f'<!-- c --><list count="1">{EVENT[:-2]} future="x"/></list>')
    assert [e.target for e in parse_history(xml)] == ["node3"]


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_garbage_bytes_raise_only_history_error(data: bytes) -> None:
    try:
        events = parse_history(data)
    except HistoryError:
        return
    assert all(isinstance(e, FencingEvent) for e in events)


ATTRIBUTES = ("action", "target", "client", "origin", "status", "completed", "delegate", "count")


@settings(max_examples=300)
@given(
    st.sampled_from(ATTRIBUTES),
    st.text(st.characters(min_codepoint=1, max_codepoint=0xD7FF), max_size=40),
)
def test_any_attribute_value_parses_or_is_a_history_error(name: str, value: str) -> None:
    attrs = {
        "action": "off",
        "target": "node3",
        "client": "c",
        "origin": "node1",
        "status": "success",
        "completed": "2026-12-06 17:06:26Z",
        "delegate": "a human",
    }
    count = value if name == "count" else "1"
    attrs[name] = value
    event = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items() if k != "count")
    xml = doc(f"<list count={quoteattr(count)}><fence_event {event}/></list>")
    try:
        events = parse_history(xml)
    except HistoryError:
        return
    assert len(events) == 1 and events[0].target == attrs["target"]


# -- the rule as a property ---------------------------------------------------------------------

HOSTS = ("node1", "node3", "NODE3")
events_strategy = st.builds(
    FencingEvent,
    target=st.sampled_from(HOSTS),
    action=st.sampled_from(("off", "reboot", "on", "status")),
    state=st.sampled_from(list(EventState)),
    completed=st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
    delegate=st.sampled_from((None, "a human", "node2")),
    origin=st.just("node1"),
    client=st.just("stonith_admin.1"),
    manual=st.booleans(),
)


@given(st.lists(events_strategy, max_size=12), st.floats(0, 100, allow_nan=False))
def test_the_proof_is_the_latest_event_that_proves_the_host_down(
    events: list[FencingEvent], since: float
) -> None:
    proof = proof_of_down(events, "node3", since)
    proving = [e for e in events if proves_down(e, "node3", since)]
    if proof is None:
        assert proving == []
        return
    assert proof.target == "node3" and proof.action in ("off", "reboot")
    assert proof.state is EventState.SUCCESS
    assert proof.completed is not None and proof.completed >= since
    assert all(e.completed is not None and e.completed <= proof.completed for e in proving)


def test_nan_since_proves_nothing() -> None:
    assert proof_of_down(load("history-confirmed.xml"), "node3", float("nan")) is None
