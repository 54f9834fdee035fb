"""A Pacemaker CIB export -> its fence_xvm devices and whom each fences, with line numbers (pure).

What an operator copies from the guest cluster (``cibadmin -Q`` or ``pcs cluster cib FILE``):
the ``<cib>`` document. xvmd reads its version (``admin_epoch``, ``epoch``), the cluster's name
(the ``cluster-name`` property), and every stonith primitive of type ``fence_xvm`` or
``fence_virt`` with its instance attributes; the rest (other resources, constraints, status)
is ignored.

Whom a device fences, as Pacemaker's fencer decides it for a device:

- ``pcmk_host_map="node1:vm1;node2:vm2,vm3"``: each node and the VMs (ports) that fence it;
  entries are separated by ``;`` or white space, a name from its ports by ``:`` or ``=``, ports
  by ``,``; a backslash keeps the next character as it is;
- else ``pcmk_host_list="node1 node2"``: those nodes, each fenced as the VM named ``port`` if the
  device has one, else as the VM with the node's own name;
- else the device fences any node of the cluster, as the VM with the node's name (Pacemaker
  asks the device's list: ``fence_xvm -o list`` shows VM names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from .issues import Code, Issue
from .lines import SourceLines
from .model import XVM_AGENTS, FenceDevice, frozen_attrs
from .parse import whole_number

MAX_VERSION_EPOCH = 2**20
"""``epoch`` per ``admin_epoch``: the version is admin_epoch * this + epoch."""
_ENTRY = re.compile(r"[;\s]")  # between host map entries
_NAME_PORTS = re.compile(r"[:=]")
_PORTS = re.compile(r",")


@dataclass(frozen=True, slots=True)
class Target:
    """Device ``device`` fences node ``node`` as VM ``vm`` (from the line named)."""

    node: str
    vm: str
    line: int


@dataclass(frozen=True, slots=True)
class CibDevices:
    version: int
    cluster_name: str
    devices: tuple[FenceDevice, ...]
    targets: dict[str, tuple[Target, ...] | None]  # device -> targets; None: any node
    file: str
    name_line: int = 0


def host_map(text: str) -> tuple[list[tuple[str, str]], str]:
    """``pcmk_host_map`` as (node, port) pairs, and what could not be read ("" if all)."""
    pairs: list[tuple[str, str]] = []
    bad = []
    for entry in (e for e in _split(text, _ENTRY) if e):
        parts = _split(entry, _NAME_PORTS, limit=1)
        if len(parts) != 2 or not all(parts):
            bad.append(_unescape(entry))
            continue
        name, ports = parts
        pairs += [(_unescape(name), _unescape(p)) for p in _split(ports, _PORTS) if p]
    return pairs, ", ".join(repr(b) for b in bad)


def _split(text: str, separator: re.Pattern[str], limit: int = -1) -> list[str]:
    """``text`` cut at each character matching ``separator`` that no backslash escapes (at
    most ``limit`` cuts); the escapes stay in the pieces, for ``_unescape``."""
    pieces: list[str] = []
    current, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current += text[i : i + 2]
            i += 2
            continue
        if limit != 0 and separator.fullmatch(text[i]):
            pieces.append(current)
            current = ""
            limit -= 1
        else:
            current += text[i]
        i += 1
    return [*pieces, current]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _nvpairs(primitive: etree._Element) -> dict[str, tuple[str, etree._Element]]:
    found: dict[str, tuple[str, etree._Element]] = {}
    for attrs in primitive.iterchildren("instance_attributes"):
        for nv in attrs.iterchildren("nvpair"):
            name, value = nv.get("name"), nv.get("value")
            if name is not None and value is not None:
                found[name] = (value, nv)
    return found


class _Reader:
    def __init__(self, data: bytes, file: str) -> None:
        self.file = file
        self.lines = SourceLines(data)
        self.issues: list[Issue] = []

    def add(self, code: Code, message: str, el: etree._Element | None) -> None:
        self.issues.append(
            Issue(code, message, self.file, self.lines.start(el) if el is not None else 0)
        )

    def version(self, root: etree._Element) -> int:
        admin = whole_number(root.get("admin_epoch", "0"))
        epoch = whole_number(root.get("epoch", ""))
        if admin is None or epoch is None or epoch >= MAX_VERSION_EPOCH:
            why = f'<cib> epoch="{root.get("epoch")}" admin_epoch="{root.get("admin_epoch")}"'
            self.add(Code.BAD_NUMBER, f"{why} are not a version xvmd can compare", root)
            return 0
        return admin * MAX_VERSION_EPOCH + epoch

    def targets(
        self, dev: str, pairs: dict[str, tuple[str, etree._Element]]
    ) -> tuple[Target, ...] | None:
        if "pcmk_host_map" in pairs:
            text, nv = pairs["pcmk_host_map"]
            found, bad = host_map(text)
            line = self.lines.start(nv)
            if bad:
                self.add(Code.BAD_HOST_MAP, f"{dev}: pcmk_host_map entries {bad} are not "
                         "node:port", nv)  # fmt: skip
            return tuple(Target(node, vm, line) for node, vm in found)
        if "pcmk_host_list" in pairs:
            text, nv = pairs["pcmk_host_list"]
            port = pairs.get("port", (None, nv))[0]
            line = self.lines.start(nv)
            nodes = [n for n in re.split(r"[\s,;]+", text) if n]
            return tuple(Target(n, port or n, line) for n in nodes)
        return None

    def device(self, primitive: etree._Element) -> tuple[FenceDevice, tuple[Target, ...] | None]:
        name = primitive.get("id") or "?"
        pairs = _nvpairs(primitive)
        attrs = {k: v for k, (v, _) in pairs.items()}
        line = self.lines.start(primitive)
        return FenceDevice(name, primitive.get("type", ""), frozen_attrs(attrs), line, self.file), (
            self.targets(name, pairs)
        )


def parse_cib(root: etree._Element, data: bytes, file: str) -> tuple[CibDevices, list[Issue]]:
    """The fence_xvm devices of the CIB whose root element is ``root``."""
    rd = _Reader(data, file)
    version = rd.version(root)
    name, name_line = "", 0
    for nv in root.iterfind("configuration/crm_config/cluster_property_set/nvpair"):
        if nv.get("name") == "cluster-name":
            name, name_line = nv.get("value") or "", rd.lines.start(nv)
    devices: list[FenceDevice] = []
    targets: dict[str, tuple[Target, ...] | None] = {}
    resources = root.find("configuration/resources")
    for primitive in resources.iter("primitive") if resources is not None else []:
        if primitive.get("class") != "stonith" or primitive.get("type") not in XVM_AGENTS:
            continue
        dev, tgt = rd.device(primitive)
        if dev.name in targets:
            rd.add(Code.DUPLICATE_DEVICE_NAME, f"stonith resource id {dev.name!r} twice", primitive)
            continue
        devices.append(dev)
        targets[dev.name] = tgt
    if resources is None:
        rd.add(Code.MISSING_ELEMENT, "<cib> has no <configuration><resources>", root)
    return CibDevices(version, name, tuple(devices), targets, file, name_line), rd.issues
