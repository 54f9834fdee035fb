"""The guest cluster's corosync.conf -> its name and nodes, with line numbers (pure).

A Pacemaker guest cluster has no cluster.conf: its members are the ``nodelist`` of the guests'
corosync.conf (corosync 3: ``node { nodeid, name, ring0_addr, ... }``). xvmd reads only what it
needs: ``totem.cluster_name`` and the nodes; the rest is accepted and ignored, as corosync
itself would run it.

Rules:
1. Pure: bytes and a file name in, values and issues out; nothing raises for any input.
2. The grammar is corosync's: ``name {`` opens a section, ``}`` closes it, ``key: value`` sets
   a value, ``#`` starts a comment line. Anything else is an issue at its line.
3. A node needs a ``nodeid`` and a ``ring0_addr``; its name is ``name``, else ``ring0_addr``
   (as Pacemaker names it). Every ring address is a name the node may send requests from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .issues import Code, Issue
from .limits import MAX_CONFIG_BYTES, MAX_NODES
from .parse import whole_number

MAX_DEPTH = 8
"""Nested sections (corosync.conf uses three: nodelist, node, and interface in totem)."""


@dataclass(frozen=True, slots=True)
class CoroNode:
    name: str
    nodeid: int
    addresses: tuple[str, ...]  # ring0_addr, ring1_addr, ... in ring order
    line: int


@dataclass(frozen=True, slots=True)
class CorosyncConf:
    cluster_name: str
    nodes: tuple[CoroNode, ...]
    file: str
    name_line: int = 0


@dataclass
class _Section:
    name: str
    line: int
    values: dict[str, tuple[str, int]] = field(default_factory=dict)
    children: list[_Section] = field(default_factory=list)


def _tree(text: str, file: str, issues: list[Issue]) -> _Section:
    """The sections and values of the file; every line that is neither is an issue."""
    root = _Section("", 0)
    stack = [root]
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "}":
            if len(stack) == 1:
                issues.append(Issue(Code.CONF_SYNTAX, "'}' closes no section", file, n))
            else:
                stack.pop()
        elif line.endswith("{") and ":" not in line:
            name = line[:-1].strip()
            if not name or len(stack) > MAX_DEPTH:
                why = "a section needs a name" if not name else f"more than {MAX_DEPTH} levels"
                issues.append(Issue(Code.CONF_SYNTAX, why, file, n))
            child = _Section(name, n)
            stack[-1].children.append(child)
            stack.append(child)
        elif ":" in line:
            key, _, value = line.partition(":")
            stack[-1].values[key.strip()] = (value.strip(), n)
        else:
            why = f"{line[:40]!r} is neither 'key: value', 'name {{' nor '}}'"
            issues.append(Issue(Code.CONF_SYNTAX, why, file, n))
    if len(stack) > 1:
        why = f"section {stack[-1].name!r} is not closed"
        issues.append(Issue(Code.CONF_SYNTAX, why, file, stack[-1].line))
    return root


def _sections(parent: _Section, name: str) -> list[_Section]:
    return [c for c in parent.children if c.name == name]


def _node(sec: _Section, file: str, issues: list[Issue]) -> CoroNode | None:
    addresses = []
    for ring in range(8):
        value = sec.values.get(f"ring{ring}_addr")
        if value is not None and value[0]:
            addresses.append(value[0])
    raw_id = sec.values.get("nodeid")
    nodeid = whole_number(raw_id[0]) if raw_id is not None else None
    if raw_id is None:
        issues.append(Issue(Code.MISSING_ATTRIBUTE, "node has no nodeid", file, sec.line))
    elif nodeid is None or nodeid < 1:
        why = f"nodeid {raw_id[0][:20]!r} is not a whole number from 1"
        issues.append(Issue(Code.BAD_NUMBER, why, file, raw_id[1]))
    if not addresses:
        issues.append(Issue(Code.MISSING_ATTRIBUTE, "node has no ring0_addr", file, sec.line))
    name = sec.values.get("name", ("", 0))[0] or (addresses[0] if addresses else "")
    if nodeid is None or nodeid < 1 or not name:
        return None
    return CoroNode(name, nodeid, tuple(addresses), sec.line)


def parse_corosync(data: bytes, file: str) -> tuple[CorosyncConf | None, list[Issue]]:
    """The cluster's name and nodes; None when there are none to use."""
    if len(data) > MAX_CONFIG_BYTES:
        why = f"{file}: is {len(data)} bytes, more than the {MAX_CONFIG_BYTES} allowed"
        return None, [Issue(Code.CONFIG_TOO_LARGE, why, file, 0)]
    issues: list[Issue] = []
    root = _tree(data.decode("utf-8", errors="replace"), file, issues)
    name, name_line = "", 0
    for totem in _sections(root, "totem"):
        name, name_line = totem.values.get("cluster_name", (name, name_line))
    lists = _sections(root, "nodelist")
    if not lists:
        issues.append(Issue(Code.MISSING_ELEMENT, "no nodelist section", file, 0))
        return None, issues
    found = [s for nl in lists for s in _sections(nl, "node")]
    if len(found) > MAX_NODES:
        why = f"nodelist has {len(found)} nodes; xvmd reads at most {MAX_NODES}"
        issues.append(Issue(Code.TOO_MANY_NODES, why, file, found[MAX_NODES].line))
        return None, issues
    nodes = [n for n in (_node(s, file, issues) for s in found) if n is not None]
    if not name:
        issues.append(Issue(Code.MISSING_ATTRIBUTE, "totem has no cluster_name", file, 0))
        return None, issues
    return CorosyncConf(name, tuple(nodes), file, name_line), issues
