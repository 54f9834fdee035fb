"""Where an element's start tag begins, and on which line one of its attributes is.

libxml2's ``sourceline`` is the line where a start tag ENDS: for a tag whose attributes span
several lines a problem would point below the attribute it is about. ``SourceLines`` finds the
start tags that span lines with one linear scan of the bytes, and only when the file has one.

Rules:
1. Linear: at most one scan of the file; each lookup is a binary search plus the tag itself.
2. Never wrong silently: whatever cannot be matched falls back to ``sourceline``.
3. Works on the bytes: '<', '>', quotes and newlines are single bytes in every
   ASCII-compatible encoding (a UTF-16 file just gets the ``sourceline``s).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left

from lxml import etree

# Could a start tag span lines: a newline before its '>', outside or inside a quoted value
# (which may hold '>' but never '<')? A cheap test; a false hit (in a comment) costs a scan.
_MAYBE_MULTILINE = re.compile(
    rb"<[^\s/>!?<](?:[^>\"'\n<]++|\"[^\"<\n]*+\"|'[^'<\n]*+')*+(?:\n|\"[^\"<\n]*+\n|'[^'<\n]*+\n)"
)
# Markup in document order. Comments, CDATA, PIs and the DOCTYPE are matched whole so that a
# '<name' inside them is not taken for a tag; quoted attribute values may hold '>' and newlines.
_TOKEN = re.compile(
    rb"<!--.*?-->"
    rb"|<!\[CDATA\[.*?\]\]>"
    rb"|<\?.*?\?>"
    rb"|<!(?:[^<>\"'\[]++|\"[^\"]*+\"|'[^']*+'"
    rb"|\[(?:[^<\]]++|<!--.*?-->|<\?.*?\?>|<(?:[^<>\"']++|\"[^\"]*+\"|'[^']*+')*+>)*+\])*+>"
    rb"|</[^>]*+>"
    rb"|<(?P<name>[^\s/>]++)(?:[^>\"']++|\"[^\"]*+\"|'[^']*+')*+>",
    re.S,
)
_NAME = re.compile(rb"<([^\s/>]++)")
_ATTR = re.compile(rb"([^\s=<>/\"']++)\s*+=\s*+(?:\"[^\"]*+\"|'[^']*+')")


def _sourceline(el: etree._Element) -> int:
    line = el.sourceline
    return line if isinstance(line, int) else 0


def _previous(el: etree._Element) -> etree._Element | None:
    """The element whose start tag comes right before ``el``'s in the document."""
    prev = next(el.itersiblings(etree.Element, preceding=True), None)
    if prev is None:
        return el.getparent()
    while (last := next(prev.iterchildren(etree.Element, reversed=True), None)) is not None:
        prev = last
    return prev


class SourceLines:
    """Start and attribute lines of the elements parsed from ``data``."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        # One entry per start tag that spans lines, in file order. At most one such tag can
        # end on a given line, so the end line is a key.
        self._ends = array("Q")
        self._starts = array("Q")
        self._offsets = array("Q")
        self._stops = array("Q")
        self._scanned = _MAYBE_MULTILINE.search(data) is not None
        if self._scanned:
            self._scan()

    @property
    def scanned(self) -> bool:
        """Whether the bytes were scanned: only a file that may have a tag spanning lines is."""
        return self._scanned

    @property
    def spanning(self) -> int:
        """How many start tags span lines."""
        return len(self._ends)

    def _scan(self) -> None:
        data, line, pos = self._data, 1, 0
        for m in _TOKEN.finditer(data):
            line += data.count(b"\n", pos, m.start())
            span = data.count(b"\n", m.start(), m.end())
            if span and m.start("name") >= 0:
                self._ends.append(line + span)
                self._starts.append(line)
                self._offsets.append(m.start())
                self._stops.append(m.end())
            line, pos = line + span, m.end()

    def _tag(self, el: etree._Element) -> int | None:
        """Index of ``el``'s start tag among those that span lines; None if it is on one line
        (or cannot be matched)."""
        line = el.sourceline
        if not self._ends or not isinstance(line, int) or not isinstance(el.tag, str):
            return None
        i = bisect_left(self._ends, line)
        if i == len(self._ends) or self._ends[i] != line:
            return None
        # The tag spanning lines is the first to end on its last line: if an earlier element
        # ends there too, ``el`` begins on that line.
        prev = _previous(el)
        if prev is not None and _sourceline(prev) >= line:
            return None
        m = _NAME.match(self._data, self._offsets[i])
        name = m.group(1).rpartition(b":")[2] if m else b""
        return i if name == etree.QName(el).localname.encode() else None

    def start(self, el: etree._Element) -> int:
        """The line on which ``el``'s start tag begins (the ``<name``)."""
        i = self._tag(el)
        return _sourceline(el) if i is None else self._starts[i]

    def attr(self, el: etree._Element, attr: str) -> int:
        """The line of ``attr=`` in ``el``'s start tag (its start line if not written there,
        e.g. a DTD default)."""
        i = self._tag(el)
        if i is None:
            return _sourceline(el)
        begin, end, want = self._offsets[i], self._stops[i], attr.encode()
        for m in _ATTR.finditer(self._data, begin, end):
            if m.group(1) == want:
                return self._starts[i] + self._data.count(b"\n", begin, m.start())
        return self._starts[i]
