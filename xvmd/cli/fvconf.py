"""fence_virtd's /etc/fence_virt.conf: parse it, and turn it into the equivalent xvmd settings.

Rules:
1. Pure: text in, values out. The grammar is fence_virtd's: nested ``name { ... }`` blocks,
   ``key = "value";`` assignments (values always double-quoted), ``#`` comments, keys that may
   repeat.
2. Carry over what means the same in xvmd; name everything that cannot be carried over and why.
   Where fence_virtd's behaviour differs from its configuration (the tcp listener's ``auth``
   setting really sets the hash), follow the behaviour and say so.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r'\s*(?:(?P<comment>#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<word>[A-Za-z0-9_.\-/:\[\]]+)'
    r"|(?P<punct>[{}=;]))"
)


class FvConfError(ValueError):
    """The file is not in fence_virt.conf syntax; the message names the line."""


@dataclass
class Block:
    name: str
    line: int
    values: list[tuple[str, str, int]] = field(default_factory=list)  # (key, value, line)
    blocks: list[Block] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        for k, v, _ in self.values:
            if k == key:
                return v
        return None

    def all(self, key: str) -> list[str]:
        return [v for k, v, _ in self.values if k == key]

    def block(self, name: str) -> Block | None:
        for b in self.blocks:
            if b.name == name:
                return b
        return None


def parse(text: str) -> Block:
    """Parse fence_virt.conf text into a root block. Raises FvConfError."""
    return _tree(_tokens(text))


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, line) of every word, string and punctuation mark; comments skipped."""
    tokens: list[tuple[str, str, int]] = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            rest = text[pos:].lstrip()
            if not rest:
                break
            bad_line = line + text[pos : len(text) - len(rest)].count("\n")
            raise FvConfError(f"line {bad_line}: unexpected {rest[:20]!r}")
        start_line = line + text[pos : m.start(m.lastgroup or 0)].count("\n")
        line += text[pos : m.end()].count("\n")
        pos = m.end()
        kind = m.lastgroup
        if kind == "comment" or kind is None:
            continue
        value = m.group(kind)
        if kind == "str":
            value = value[1:-1].replace('\\"', '"')
        tokens.append((kind, value, start_line))
    return tokens


def _tree(tokens: list[tuple[str, str, int]]) -> Block:
    root = Block("", 0)
    stack = [root]
    i = 0
    while i < len(tokens):
        kind, value, at = tokens[i]
        if kind == "punct" and value == "}":
            if len(stack) == 1:
                raise FvConfError(f"line {at}: '}}' without an open block")
            stack.pop()
            i += 1
            continue
        if kind != "word":
            raise FvConfError(f"line {at}: expected a name, got {value!r}")
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("eof", "", at)
        if nxt[:2] == ("punct", "{"):
            blk = Block(value, at)
            stack[-1].blocks.append(blk)
            stack.append(blk)
            i += 2
            continue
        if nxt[:2] != ("punct", "="):
            raise FvConfError(f"line {at}: expected '{{' or '=' after {value}")
        stack[-1].values.append((value, _assigned(tokens, i, value, at), at))
        i += 4
    if len(stack) > 1:
        raise FvConfError(f"line {stack[-1].line}: block {stack[-1].name} is never closed")
    return root


def _assigned(tokens: list[tuple[str, str, int]], i: int, name: str, at: int) -> str:
    """The value of ``name = "value";`` starting at token ``i``."""
    val = tokens[i + 2] if i + 2 < len(tokens) else ("eof", "", at)
    end = tokens[i + 3] if i + 3 < len(tokens) else ("eof", "", at)
    if val[0] != "str":
        raise FvConfError(f"line {at}: the value of {name} must be double-quoted")
    if end[:2] != ("punct", ";"):
        raise FvConfError(f"line {at}: missing ';' after {name} = \"{val[1]}\"")
    return val[1]


@dataclass
class Migration:
    options: list[str]  # xvmd command-line options
    notes: list[str]  # carried over, but worth knowing
    dropped: list[str]  # cannot be carried over, and why

    @property
    def command(self) -> str:
        return shlex.join(["xvmd", *self.options])


_MULTICAST_FLAGS = (
    ("key_file", "-k"),
    ("interface", "-I"),
    ("address", "-a"),
    ("port", "-p"),
)


def convert(root: Block) -> Migration:
    m = Migration(
        ["--local", "--no-ccs"],
        [
            "fence_virtd never checks quorum: --local keeps that behaviour; to fence only while "
            "the hosts' corosync partition is quorate, describe the guests in cluster.conf and "
            "drop --local --no-ccs (docs/cluster-mode.md)",
        ],
        [],
    )
    daemon = root.block("fence_virtd") or Block("fence_virtd", 0)
    listener = daemon.get("listener") or "multicast"
    backend = daemon.get("backend") or "libvirt"
    listeners = root.block("listeners") or Block("listeners", 0)
    backends = root.block("backends") or Block("backends", 0)
    lst = listeners.block(listener) or Block(listener, 0)
    if listener == "multicast":
        _multicast(lst, m)
    elif listener == "tcp":
        _tcp(lst, m)
    else:
        m.dropped.append(
            f'listener "{listener}": xvmd serves multicast and tcp (fence_xvm and fence_virt '
            "-T); serial and vsock channels are not supported"
        )
    _backend(backend, backends.block(backend) or Block(backend, 0), m)
    _groups(root.block("groups"), m)
    _daemon(daemon, m)
    return m


def _multicast(lst: Block, m: Migration) -> None:
    for key, flag in _MULTICAST_FLAGS:
        value = lst.get(key)
        if value is not None:
            m.options += [flag, value]
    family = lst.get("family")
    if family:
        m.options += ["-i", family]
    for key in ("hash", "auth"):
        value = lst.get(key)
        if value:
            m.options += [f"--{key}", value]
    if lst.get("key_file") is None:
        m.notes.append("no key_file: fence_virtd used /etc/cluster/fence_xvm.key, so does xvmd")


def _tcp(lst: Block, m: Migration) -> None:
    addr = lst.get("address") or "127.0.0.1"
    port = lst.get("port") or "1229"
    host = f"[{addr}]" if ":" in addr else addr
    m.options += ["--tcp", f"{host}:{port}"]
    if lst.get("key_file"):
        m.options += ["-k", lst.get("key_file") or ""]
    # fence_virtd stores the tcp listener's auth= in the hash minimum (a known bug): follow
    # what it did, so the same clients keep working.
    auth = lst.get("auth")
    hash_min = auth or lst.get("hash")
    if hash_min:
        m.options += ["--hash", hash_min]
    if auth:
        m.notes.append(
            f'tcp listener auth = "{auth}" acted as the hash minimum in fence_virtd (a '
            "known bug); carried over as --hash, and --auth stays sha256 as it was"
        )
    m.notes.append("xvmd still listens for multicast as well; block UDP to the port if unused")


def _backend(backend: str, bk: Block, m: Migration) -> None:
    if backend == "libvirt":
        uris = [v for k, v, _ in bk.values if re.fullmatch(r"uri\d*", k)]
        if uris:
            m.options += ["-U", uris[0]]
        if len(uris) > 1:
            m.dropped.append(
                f"extra libvirt URIs {', '.join(uris[1:])}: xvmd uses one hypervisor "
                "connection; run one xvmd per hypervisor"
            )
        return
    uri = bk.get("uri")
    if uri:
        m.options += ["-U", uri]
    m.dropped.append(
        f'backend "{backend}": xvmd has no cpg backend. Its cluster mode replaces it: the '
        "hosts run corosync, each host fences only its own VMs and only while quorate, and "
        "an unknown VM is never assumed dead"
    )


def _groups(groups: Block | None, m: Migration) -> None:
    for g in groups.blocks if groups is not None else []:
        name = g.get("name") or "(unnamed)"
        m.dropped.append(
            f"group {name}: requesters {', '.join(g.all('ip')) or 'none'} may fence "
            f"{', '.join(g.all('uuid') + g.all('name')[1:]) or 'nothing'} -- express this "
            "in cluster.conf instead (nodes with their addresses as <altname>, their VMs "
            "as port=), which xvmd enforces per request"
        )


def _daemon(daemon: Block, m: Migration) -> None:
    for key in ("module_path", "foreground", "wait_for_init", "wait_for_backend"):
        if daemon.get(key) is not None:
            m.notes.append(
                f"{key}: not needed by xvmd (no plugins; runs in the foreground; "
                "starts without waiting for libvirt and reconnects by itself)"
            )
    debug = daemon.get("debug")
    if debug and debug.isdigit() and int(debug) > 0:
        m.options.append("-d")
    if daemon.get("name_mode"):
        m.dropped.append("name_mode: a cpg setting; xvmd accepts names and UUIDs alike")
