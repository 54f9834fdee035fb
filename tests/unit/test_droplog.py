"""What a drop leaves behind: one line per kind and source per interval (with a count of the
rest), one line and one record per request however often it is retransmitted."""

from __future__ import annotations

import logging

from tests.support import pyclient
from xvmd.core.droplog import FLOOD_INTERVAL, PER_REQUEST_INTERVAL, Drop, DropLines
from xvmd.protocol.auth import Key
from xvmd.protocol.drops import DropReason
from xvmd.protocol.wire import Op, parse_request

KEY = Key(b"k" * 32)


def test_a_flood_of_one_kind_costs_one_line_per_interval_with_a_count() -> None:
    lines = DropLines()
    first = lines.quiet(DropReason.BAD_CALLBACK, "10.0.0.9", 0.0, "callback refused")
    quiet = [lines.quiet(DropReason.BAD_CALLBACK, "10.0.0.9", t, "x") for t in (1.0, 2.0, 3.0)]
    other = lines.quiet(DropReason.BAD_CALLBACK, "10.0.0.8", 3.0, "from another source")
    later = lines.quiet(DropReason.BAD_CALLBACK, "10.0.0.9", FLOOD_INTERVAL, "callback refused")
    assert first == Drop(DropReason.BAD_CALLBACK, "callback refused", logging.WARNING)
    assert all(d == Drop(DropReason.BAD_CALLBACK) for d in quiet)  # counted, not logged
    assert other.message == "from another source"
    assert later.message == "callback refused (3 more since the last report)"


def test_quiet_repeats_are_owed_as_a_summary_once_their_interval_passed() -> None:
    lines = DropLines()
    for t in (0.0, 1.0, 2.0):
        lines.quiet(DropReason.FORGED, "10.0.0.9", t, "attack", logging.ERROR)
    lines.quiet(DropReason.BUSY, None, 0.0, "too busy")
    lines.quiet(DropReason.BUSY, None, 1.0, "too busy")
    assert lines.summaries(FLOOD_INTERVAL - 1) == []
    assert sorted(lines.summaries(FLOOD_INTERVAL)) == [
        f"busy: 1 more from all senders in the last {FLOOD_INTERVAL:g} s",
        f"forged: 2 more from 10.0.0.9 in the last {FLOOD_INTERVAL:g} s",
    ]
    assert lines.summaries(2 * FLOOD_INTERVAL) == []  # paid once


def test_failed_callbacks_are_reported_per_address_and_port() -> None:
    lines = DropLines()
    assert lines.per_callback(("10.0.0.9", 1229), 0.0, "refused") == "refused"
    assert lines.per_callback(("10.0.0.9", 1229), 1.0, "refused") is None
    assert lines.per_callback(("10.0.0.9", 1230), 1.0, "refused") == "refused"
    again = lines.per_callback(("10.0.0.9", 1229), FLOOD_INTERVAL, "refused")
    assert again == "refused (1 more failures since the last report)"


def test_a_retransmitted_request_is_logged_and_recorded_once() -> None:
    req = parse_request(pyclient.build(Op.OFF, "vm1", KEY, port=1229))
    lines = DropLines()
    first = lines.once_per_request(req, 0.0, DropReason.INQUORATE, "not quorate")
    retransmits = [lines.once_per_request(req, t, DropReason.INQUORATE, "x") for t in (2.0, 4.0)]
    after = lines.once_per_request(req, PER_REQUEST_INTERVAL, DropReason.INQUORATE, "not quorate")
    assert first.record and first.detail == "not quorate" and first.level == logging.WARNING
    assert first.message == f"off 'vm1' from {req.address} dropped without answer: not quorate"
    assert retransmits == [Drop(DropReason.INQUORATE)] * 2
    assert after.record  # a request still refused after the interval is news again
