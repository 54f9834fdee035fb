"""cluster.conf bytes -> ``Cluster`` plus every problem found, with line numbers.

Rules:
1. Pure: bytes and a file name in, values out. Reading files is ``ccs.source``'s job.
2. Never stops at the first problem: everything that can be checked is checked, so one run of
   ``xvmd check-config`` shows the operator the whole list.
3. The XML parser resolves no entities and fetches nothing from the network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from lxml import etree

from .issues import Code, Issue
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


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False
    )


def parse_bool(text: str) -> bool | None:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


class _Checker:
    """Collects issues for one file; small helpers keep the element walkers readable."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[Issue] = []

    def add(self, code: Code, message: str, line: int | None) -> None:
        self.issues.append(Issue(code, message, self.file, line or 0))

    def required(self, el: etree._Element, attr: str) -> str | None:
        value = el.get(attr)
        if value is None or not value.strip():
            self.add(Code.MISSING_ATTRIBUTE, f"<{el.tag}> needs a {attr}= attribute", _line(el))
            return None
        return value.strip()

    def number(
        self, el: etree._Element, attr: str, *, minimum: int = 1, required: bool = False
    ) -> int | None:
        raw = self.required(el, attr) if required else el.get(attr)
        if raw is None:
            return None
        # ASCII digits only: int() would also take "1_0" or other scripts' digits, which
        # cman's atoi() reads differently, and the two must agree on versions and nodeids.
        text = raw.strip()
        value = int(text) if _DIGITS.fullmatch(text) else None
        if value is None or value < minimum:
            self.add(
                Code.BAD_NUMBER,
                f'<{el.tag}> {attr}="{raw}" is not a whole number >= {minimum}',
                _line(el),
            )
            return None
        return value

    def port(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        text = (raw or "").strip()
        if raw is not None and not (_DIGITS.fullmatch(text) and 1 <= int(text) <= 65535):
            self.add(
                Code.BAD_PORT, f'<{el.tag}> {attr}="{raw}" is not a port in 1..65535', _line(el)
            )

    def hash_name(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        if raw is not None and raw.strip().lower() not in HASH_NAMES:
            self.add(
                Code.BAD_HASH,
                f'<{el.tag}> {attr}="{raw}" is not none, sha1, sha256 or sha512',
                _line(el),
            )

    def family(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        if raw is not None and raw.strip().lower() not in FAMILIES:
            self.add(
                Code.BAD_FAMILY,
                f'<{el.tag}> {attr}="{raw}" is not auto, ipv4 or ipv6',
                _line(el),
            )

    def multicast(self, el: etree._Element, attr: str) -> None:
        raw = el.get(attr)
        if raw is None:
            return
        try:
            ok = ipaddress.ip_address(raw.strip()).is_multicast
        except ValueError:
            ok = False
        if not ok:
            self.add(
                Code.BAD_ADDRESS,
                f'<{el.tag}> {attr}="{raw}" is not a multicast group',
                _line(el),
            )

    def boolean(self, el: etree._Element, attr: str) -> bool | None:
        raw = el.get(attr)
        if raw is None:
            return None
        value = parse_bool(raw)
        if value is None:
            self.add(Code.BAD_BOOLEAN, f'<{el.tag}> {attr}="{raw}" is not 0 or 1', _line(el))
        return value


def _line(el: etree._Element) -> int:
    line = el.sourceline
    return line if isinstance(line, int) else 0


def _attrs(el: etree._Element, *skip: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in el.attrib.items() if k not in skip}


def _children(el: etree._Element, tag: str) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str) and etree.QName(c).localname == tag]


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
                _line(el),
            )
    if name is None:
        return None
    attrs = _attrs(el, "name")
    return DeviceRef(name, frozen_attrs(attrs), _line(el))


def _node(ck: _Checker, el: etree._Element) -> ClusterNode | None:
    name = ck.required(el, "name")
    nodeid = ck.number(el, "nodeid", required=True)
    votes = ck.number(el, "votes", minimum=0)
    altnames = []
    for alt in _children(el, "altname"):
        alt_name = ck.required(alt, "name")
        if alt_name:
            altnames.append(AltName(alt_name, _line(alt)))
    methods = []
    fence = _child(el, "fence")
    for m in _children(fence, "method") if fence is not None else []:
        mname = ck.required(m, "name")
        refs = [r for r in (_device_ref(ck, d) for d in _children(m, "device")) if r]
        methods.append(Method(mname or "?", tuple(refs), _line(m)))
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
        line=_line(el),
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
    return FenceDevice(name, agent, frozen_attrs(attrs), _line(el))


def _fence_xvmd(ck: _Checker, el: etree._Element) -> FenceXvmd:
    _xvm_options(ck, el)
    ck.port(el, "port")
    devices = tuple(d for d in (el.get("device") or "").replace(",", " ").split() if d)
    attrs = _attrs(el, "device")
    return FenceXvmd(frozen_attrs(attrs), devices, _line(el))


def _collect(
    ck: _Checker,
    parent: etree._Element | None,
    tag: str,
    fn: Callable[[_Checker, etree._Element], object],
) -> list[object]:
    if parent is None:
        return []
    return [x for x in (fn(ck, el) for el in _children(parent, tag)) if x is not None]


def parse(data: bytes, file: str) -> tuple[Cluster | None, list[Issue]]:
    """Parse cluster.conf ``data`` (named ``file`` in messages).

    Returns:
        The cluster (None when the file is unusable: not XML, wrong root, no name/version or
        nodes) and every issue found, in file order.
    """
    ck = _Checker(file)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or 0
        ck.add(Code.XML_SYNTAX, str(exc.msg or exc), line)
        return None, ck.issues
    if etree.QName(root).localname != "cluster":
        ck.add(Code.NOT_CLUSTER, f"root element is <{root.tag}>, expected <cluster>", _line(root))
        return None, ck.issues
    name = ck.required(root, "name")
    version = ck.number(root, "config_version", required=True)
    if name is not None and len(name) > 16:
        ck.add(
            Code.CLUSTER_NAME_LONG,
            f"cluster name {name!r} has {len(name)} characters",
            _line(root),
        )
    cman_el = _child(root, "cman")
    cman = Cman()
    if cman_el is not None:
        cman = Cman(
            expected_votes=ck.number(cman_el, "expected_votes"),
            two_node=bool(ck.boolean(cman_el, "two_node")),
            line=_line(cman_el),
        )
    nodes_el = _child(root, "clusternodes")
    if nodes_el is None:
        ck.add(Code.MISSING_ELEMENT, "<cluster> has no <clusternodes>", _line(root))
    nodes = _collect(ck, nodes_el, "clusternode", _node)
    devices = _collect(ck, _child(root, "fencedevices"), "fencedevice", _fencedevice)
    xvmd_el = _child(root, "fence_xvmd")
    fence_xvmd = _fence_xvmd(ck, xvmd_el) if xvmd_el is not None else None
    ck.issues.sort(key=lambda i: i.line)
    if name is None or version is None or nodes_el is None:
        return None, ck.issues
    cluster = Cluster(
        name=name,
        config_version=version,
        cman=cman,
        nodes=tuple(n for n in nodes if isinstance(n, ClusterNode)),
        devices=tuple(d for d in devices if isinstance(d, FenceDevice)),
        fence_xvmd=fence_xvmd,
        file=file,
        line=_line(root) or 1,
    )
    return cluster, ck.issues
