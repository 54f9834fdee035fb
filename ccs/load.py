"""One load of the configuration: read, parse, read keys, validate -> a snapshot or the reasons."""

from __future__ import annotations

import hashlib
import os.path
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .issues import Issue, has_errors
from .model import Cluster
from .pacemaker import parse_pacemaker
from .parse import is_cib, parse_root, tree
from .source import SourceError, key_paths, read_config, read_keys
from .validate import HostPlan, validate


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A validated configuration; the daemon swaps whole snapshots, never edits one."""

    cluster: Cluster
    plan: HostPlan
    issues: tuple[Issue, ...]  # warnings only: a snapshot with errors is never built
    digest: str = ""  # sha256 of the configuration's bytes, to tell edits from key rotations

    @property
    def version(self) -> int:
        return self.cluster.config_version


@dataclass(frozen=True, slots=True)
class LoadResult:
    snapshot: Snapshot | None
    issues: tuple[Issue, ...]
    cluster: Cluster | None = None
    plan: HostPlan | None = None
    unreadable: str | None = None  # set when the file itself was not read (why), e.g. too large


Resolver = Callable[[Iterable[str]], Mapping[str, tuple[str, ...]]]


def load(
    path: str,
    devices: Sequence[str] | None = None,
    resolver: Resolver | None = None,
    corosync: str | None = None,
) -> LoadResult:
    """Load ``path``; ``snapshot`` is set only when there are no errors.

    ``path`` is a cluster.conf, or a Pacemaker CIB export (told apart by its root element),
    read with the guest cluster's ``corosync`` conf (default: corosync.conf beside it).
    ``resolver`` (e.g. ``ccs.source.resolve``) looks up every node name and altname for the
    requester check; without one there is no requester map.
    """
    try:
        data = read_config(path)
    except SourceError as exc:
        issue = Issue(exc.code, str(exc), path, 0)
        return LoadResult(None, (issue,), unreadable=str(exc))
    return load_bytes(data, path, devices, resolver, corosync=corosync)


def corosync_path(cib_path: str, corosync: str | None = None) -> str:
    """The guest cluster's corosync.conf read with a CIB export: ``corosync``, else the file
    named corosync.conf in the CIB export's directory."""
    return corosync or os.path.join(os.path.dirname(os.path.abspath(cib_path)), "corosync.conf")


def load_bytes(
    data: bytes,
    path: str,
    devices: Sequence[str] | None = None,
    resolver: Resolver | None = None,
    *,
    corosync: str | None = None,
    read: Callable[[str], bytes] = read_config,
) -> LoadResult:
    root, issues = tree(data, path)
    if root is None:
        return LoadResult(None, tuple(issues))
    digest = hashlib.sha256(data)
    if is_cib(root):
        coro = corosync_path(path, corosync)
        try:
            coro_data = read(coro)
        except SourceError as exc:
            issue = Issue(exc.code, f"{exc} (the guest cluster's corosync.conf)", coro, 0)
            return LoadResult(None, (issue,), unreadable=str(exc))
        digest.update(b"\0" + coro_data)
        cluster, issues = parse_pacemaker(root, data, path, coro_data, coro)
    else:
        cluster, issues = parse_root(root, data, path)
    if cluster is None:
        return LoadResult(None, tuple(issues))
    keys = read_keys(key_paths(cluster))
    addresses = None
    if resolver is not None:
        addresses = resolver([n for node in cluster.nodes for n in node.names])
    plan, more = validate(cluster, keys, devices, addresses)
    all_issues = sorted([*issues, *more], key=lambda i: (i.file, i.line))
    if has_errors(all_issues):
        return LoadResult(None, tuple(all_issues), cluster, plan)
    snap = Snapshot(cluster, plan, tuple(all_issues), digest.hexdigest())
    return LoadResult(snap, tuple(all_issues), cluster, plan)
