"""cluster.conf bytes -> ``Cluster`` plus every problem found, with line numbers.

Rules:
1. Pure: bytes and a file name in, values out. Reading files is ``ccs.source``'s job.
2. Never stops at the first problem: everything that can be checked is checked, so one run of
   ``xvmd check-config`` shows the operator the whole list.
3. The XML parser resolves no entities and fetches nothing from the network.
4. Bounded: past ``ccs.limits`` the file is refused, not walked; nothing here raises for any
   input (no int() of unbounded text).
5. A problem with an attribute points at that attribute's line, one with an element at the
   line where its start tag begins (``ccs.lines``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from itertools import islice

from lxml import etree

from .issues import Code, Issue
from .limits import MAX_CONFIG_BYTES, MAX_NODES, MAX_NUMBER
from .lines import SourceLines
from .model import (
    AltName,
    Cluster,
    ClusterNode,
    Cman,
    DeviceRef,
    FenceDevice,
    FenceXvmd,
    Method,
    frozen_attrs,
)

HASH_NAMES = frozenset({"none", "sha1", "sha256", "sha512"})
FAMILIES = frozenset({"auto", "ipv4", "ipv6"})
_TRUE = frozenset({"1", "yes", "true", "on"})
_FALSE = frozenset({"0", "no", "false", "off"})
MAX_DOMAIN_BYTES = 63
_DIGITS = re.compile(r"\+?[0-9]+")
_NUMBER_DIGITS = len(str(MAX_NUMBER))


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False
    )


def whole_number(text: str) -> int | None:
    """``text`` as a number in 0..MAX_NUMBER, or None.

    ASCII digits only: int() would also take "1_0" or other scripts' digits, which cman's
    atoi() reads differently, and the two must agree on versions and nodeids. The digits are
    counted before int() sees them: int() of thousands of digits raises.
    """
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("+").lstrip("0") or "0"
    if len(digits) > _NUMBER_DIGITS:
        return None
    value = int(digits)
    return value if value <= MAX_NUMBER else None


def _shown(raw: str) -> str:
    """An attribute value for a message: a long one is cut (it may be megabytes)."""
    return raw if len(raw) <= 40 else f"{raw[:32]}... ({len(raw)} characters)"


def parse_bool(text: str) -> bool | None:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


class _Checker:
    """Collects issues for one file; small helpers keep the element walkers readable."""

    def __init__(self, file: str, data: bytes) -> None:
        self.file = file
        self.issues: list[Issue] = []
        self.lines = SourceLines(data)

    def add(self, code: Code, message: str, line: int | None) -> None:
        self.issues.append(Issue(code, message, self.file, line or 0))

    def line(self, el: etree._Element) -> int:
        """Where ``el``'s start tag begins: for problems with the element as a whole."""
        return self.lines.start(el)

    def at(self, el: etree._Element, attr: str) -> int:
        """The line of ``attr=`` in ``el``'s start tag: for problems with its value."""
        return self.lines.attr(el, attr)

    def bad(self, code: Code, el: etree._Element, attr: str, raw: str, why: str) -> None:
        self.add(code, f'<{el.tag}> {attr}="{_shown(raw)}" {why}', self.at(el, attr))

    def required(self, el: etree._Element, attr: str) -> str | None:
        value = el.get(attr)
        if value is None or not value.strip():
            self.add(Code.MISSING_ATTRIBUTE, f"<{el.tag}> needs a {attr}= attribute", self.line(el))
            return None
        return value.strip()

    def number(
        self, el: etree._Element, attr: str, *, minimum: int = 1, required: bool = False
    ) -> int | None:
        raw = self.required(el, attr) if required else el.get(attr)
        if raw is None:
            return None
        value = whole_number(raw)
        if value is None or value < minimum:
            why = f"is not a whole number in {minimum}..{MAX_NUMBER}"
            self.bad(Code.BAD_NUMBER, el, attr, raw, why)
            return None
        return value

    def port(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        if raw is not None and not 1 <= (whole_number(raw) or 0) <= 65535:
            self.bad(Code.BAD_PORT, el, attr, raw, "is not a port in 1..65535")

    def hash_name(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        if raw is not None and raw.strip().lower() not in HASH_NAMES:
            self.bad(Code.BAD_HASH, el, attr, raw, "is not none, sha1, sha256 or sha512")

    def family(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        if raw is not None and raw.strip().lower() not in FAMILIES:
            self.bad(Code.BAD_FAMILY, el, attr, raw, "is not auto, ipv4 or ipv6")

    def multicast(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        if raw is None:
            return
        try:
            ok = ipaddress.ip_address(raw.strip()).is_multicast
        except ValueError:
            ok = False
        if not ok:
            self.bad(Code.BAD_ADDRESS, el, attr, raw, "is not a multicast group")

    def boolean(self, el: etree._Element, attr: str) -> bool | None:
        raw = el.get(attr)
        if raw is None:
            return None
        value = parse_bool(raw)
        if value is None:
            self.bad(Code.BAD_BOOLEAN, el, attr, raw, "is not 0 or 1")
        return value


def _attrs(el: etree._Element, *skip: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in el.attrib.items() if k not in skip}


def _iter_children(el: etree._Element, tag: str) -> Iterator[etree._Element]:
    return (c for c in el if isinstance(c.tag, str) and etree.QName(c).localname == tag)


def _children(el: etree._Element, tag: str) -> list[etree._Element]:
    return list(_iter_children(el, tag))


def _child(el: etree._Element, tag: str) -> etree._Element | None:
    found = _children(el, tag)
    return found[0] if found else None


def _xvm_options(ck: _Checker, el: etree._Element) -> None:
    """Value checks shared by <fencedevice agent=fence_xvm> and <fence_xvmd>."""
    for attr in ("hash", "auth"):
        ck.hash_name(el, attr)
    ck.multicast(el, "multicast_address")
    ck.family(el, "ip_family")
    ck.port(el, "ipport")
    ck.boolean(el, "use_uuid")
    if el.get("debug") is not None:
        ck.number(el, "debug", minimum=0)


def _device_ref(ck: _Checker, el: etree._Element) -> DeviceRef | None:
    name = ck.required(el, "name")
    ck.port(el, "ipport")
    ck.boolean(el, "use_uuid")
    for attr in ("port", "domain"):
        vm = el.get(attr)
        if vm is not None and len(vm.encode()) > MAX_DOMAIN_BYTES:
            ck.add(
                Code.DOMAIN_TOO_LONG,
                f'<device> {attr}="{vm[:20]}..." is '
                f"{len(vm.encode())} bytes; a request carries at most {MAX_DOMAIN_BYTES}",
                ck.at(el, attr),
            )
    if name is None:
        return None
    attrs = _attrs(el, "name")
    return DeviceRef(name, frozen_attrs(attrs), ck.line(el))


def _node(ck: _Checker, el: etree._Element) -> ClusterNode | None:
    name = ck.required(el, "name")
    nodeid = ck.number(el, "nodeid", required=True)
    votes = ck.number(el, "votes", minimum=0)
    altnames = []
    for alt in _children(el, "altname"):
        alt_name = ck.required(alt, "name")
        if alt_name:
            altnames.append(AltName(alt_name, ck.line(alt)))
    methods = []
    fence = _child(el, "fence")
    for m in _children(fence, "method") if fence is not None else []:
        mname = ck.required(m, "name")
        refs = [r for r in (_device_ref(ck, d) for d in _children(m, "device")) if r]
        methods.append(Method(mname or "?", tuple(refs), ck.line(m)))
    unfence_el = _child(el, "unfence")
    unfence = (
        []
        if unfence_el is None
        else [r for r in (_device_ref(ck, d) for d in _children(unfence_el, "device")) if r]
    )
    if name is None or nodeid is None:
        return None
    return ClusterNode(
        name=name,
        nodeid=nodeid,
        votes=1 if votes is None else votes,
        altnames=tuple(altnames),
        methods=tuple(methods),
        unfence=tuple(unfence),
        line=ck.line(el),
    )


def _fencedevice(ck: _Checker, el: etree._Element) -> FenceDevice | None:
    name = ck.required(el, "name")
    agent = ck.required(el, "agent")
    if agent in ("fence_xvm", "fence_virt"):
        _xvm_options(ck, el)
        # In the old generation port= was the IP port; on a fencedevice it is never a VM.
    if name is None or agent is None:
        return None
    attrs = _attrs(el, "name", "agent")
    return FenceDevice(name, agent, frozen_attrs(attrs), ck.line(el))


def _fence_xvmd(ck: _Checker, el: etree._Element) -> FenceXvmd:
    _xvm_options(ck, el)
    ck.port(el, "port")
    devices = tuple(d for d in (el.get("device") or "").replace(",", " ").split() if d)
    attrs = _attrs(el, "device")
    return FenceXvmd(frozen_attrs(attrs), devices, ck.line(el))


def _collect(
    ck: _Checker,
    parent: etree._Element | None,
    tag: str,
    fn: Callable[[_Checker, etree._Element], object],
) -> list[object]:
    if parent is None:
        return []
    return [x for x in (fn(ck, el) for el in _children(parent, tag)) if x is not None]


def _nodes(ck: _Checker, parent: etree._Element) -> list[ClusterNode] | None:
    """The valid nodes; None when there are more than MAX_NODES (then none is walked)."""
    els = list(islice(_iter_children(parent, "clusternode"), MAX_NODES + 1))
    if len(els) > MAX_NODES:
        ck.add(
            Code.TOO_MANY_NODES,
            f"<clusternodes> has more than {MAX_NODES} <clusternode> elements (this is "
            f"number {MAX_NODES + 1}); xvmd reads at most {MAX_NODES}",
            ck.line(els[-1]),
        )
        return None
    return [n for n in (_node(ck, el) for el in els) if n is not None]


def _cman(ck: _Checker, el: etree._Element | None) -> Cman:
    if el is None:
        return Cman()
    return Cman(
        expected_votes=ck.number(el, "expected_votes"),
        two_node=bool(ck.boolean(el, "two_node")),
        line=ck.line(el),
    )


def _tree(data: bytes, file: str) -> tuple[etree._Element | None, list[Issue]]:
    """The root element, or why there is none (too large, not XML)."""
    if len(data) > MAX_CONFIG_BYTES:
        why = f"{file}: is {len(data)} bytes, more than the {MAX_CONFIG_BYTES} allowed"
        return None, [Issue(Code.CONFIG_TOO_LARGE, why, file, 0)]
    try:
        return etree.fromstring(data, _parser()), []
    except etree.XMLSyntaxError as exc:
        return None, [Issue(Code.XML_SYNTAX, str(exc.msg or exc), file, exc.lineno or 0)]


def tree(data: bytes, file: str) -> tuple[etree._Element | None, list[Issue]]:
    """The root element of an XML configuration file, or why there is none."""
    return _tree(data, file)


def is_cib(root: etree._Element) -> bool:
    """A Pacemaker CIB export rather than a cluster.conf (see ``ccs.pacemaker``)."""
    return etree.QName(root).localname == "cib"


def parse(data: bytes, file: str) -> tuple[Cluster | None, list[Issue]]:
    """Parse cluster.conf ``data`` (named ``file`` in messages).

    Returns:
        The cluster (None when the file is unusable: too large, not XML, wrong root, no
        name/version or nodes, too many nodes) and every issue found, in file order.
    """
    root, issues = _tree(data, file)
    if root is None:
        return None, issues
    return parse_root(root, data, file)


def parse_root(root: etree._Element, data: bytes, file: str) -> tuple[Cluster | None, list[Issue]]:
    """``parse`` of a file whose XML has been read already."""
    ck = _Checker(file, data)
    if etree.QName(root).localname != "cluster":
        why = f"root element is <{root.tag}>, expected <cluster> (or <cib>: a Pacemaker CIB)"
        ck.add(Code.NOT_CLUSTER, why, ck.line(root))
        return None, ck.issues
    name = ck.required(root, "name")
    version = ck.number(root, "config_version", required=True)
    if name is not None and len(name) > 16:
        why = f"cluster name {_shown(name)!r} has {len(name)} characters"
        ck.add(Code.CLUSTER_NAME_LONG, why, ck.at(root, "name"))
    cman = _cman(ck, _child(root, "cman"))
    nodes_el = _child(root, "clusternodes")
    if nodes_el is None:
        ck.add(Code.MISSING_ELEMENT, "<cluster> has no <clusternodes>", ck.line(root))
    nodes = None if nodes_el is None else _nodes(ck, nodes_el)
    devices = _collect(ck, _child(root, "fencedevices"), "fencedevice", _fencedevice)
    xvmd_el = _child(root, "fence_xvmd")
    fence_xvmd = _fence_xvmd(ck, xvmd_el) if xvmd_el is not None else None
    ck.issues.sort(key=lambda i: i.line)
    if name is None or version is None or nodes is None:
        return None, ck.issues
    cluster = Cluster(
        name=name,
        config_version=version,
        cman=cman,
        nodes=tuple(nodes),
        devices=tuple(d for d in devices if isinstance(d, FenceDevice)),
        fence_xvmd=fence_xvmd,
        file=file,
        line=ck.line(root) or 1,
    )
    return cluster, ck.issues
