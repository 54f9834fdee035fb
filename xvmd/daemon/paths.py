"""Where a daemon keeps its control socket and audit trail, and whether those paths are usable.

One host may run several daemons, one per guest cluster (fence-virt's advice: one key per guest
cluster, one daemon per group/port). Their default paths must not collide, so they derive from
the instance name, or else from the UDP port (``instance_paths``); port 1229 without a name
keeps the historical paths.

The checks run before anything is bound: a path that cannot work is a start-up error that
leaves the port free and the existing file untouched.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from ccs.source import describe
from xvmd.daemon.settings import DEFAULT_PORT

RUN_DIR = "/run/xvmd"  # control sockets (systemd's RuntimeDirectory=xvmd)
STATE_DIR = "/var/lib/xvmd"  # audit trails (systemd's StateDirectory=xvmd)
# Overrides for a test or an unusual layout; read at every call, so one process may change them.
RUN_DIR_ENV = "XVMD_RUN_DIR"
STATE_DIR_ENV = "XVMD_STATE_DIR"
DEFAULT_CONTROL = f"{RUN_DIR}/xvmd.sock"
DEFAULT_AUDIT = f"{STATE_DIR}/audit.jsonl"
CONTROL_GLOB = "xvmd*.sock"  # every instance's control socket in the run directory

INSTANCE_MAX = 64  # keeps the socket path well inside sun_path's 108 bytes
_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV) or RUN_DIR


def state_dir() -> str:
    return os.environ.get(STATE_DIR_ENV) or STATE_DIR


def instance_problem(name: str) -> str | None:
    """Why ``name`` cannot name an instance, or None. It becomes part of file names."""
    if not _INSTANCE.fullmatch(name):
        return (
            f"instance name {name!r}: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit"
        )
    if len(name) > INSTANCE_MAX:
        return f"instance name {name!r}: longer than {INSTANCE_MAX} characters"
    return None


def instance_paths(instance: str | None, port: int) -> tuple[str, str]:
    """(control socket, audit trail) of a daemon: the one naming rule.

    ``--instance NAME``: ``xvmd-NAME.sock`` and ``audit-NAME.jsonl``; else port 1229 keeps
    ``xvmd.sock`` and ``audit.jsonl``; any other port P gives ``xvmd-P.sock``, ``audit-P.jsonl``.
    """
    if instance is not None:
        suffix = f"-{instance}"
    elif port == DEFAULT_PORT:
        suffix = ""
    else:
        suffix = f"-{port}"
    return (
        os.path.join(run_dir(), f"xvmd{suffix}.sock"),
        os.path.join(state_dir(), f"audit{suffix}.jsonl"),
    )


def state_path(audit: str | None, instance: str | None, port: int) -> str:
    """The placement memory of a daemon: beside its audit trail (so a test's or an unusual
    layout's trail directory holds both), named like it; in the state directory without one."""
    _, default_audit = instance_paths(instance, port)
    suffix = os.path.basename(default_audit)[len("audit") : -len(".jsonl")]
    directory = os.path.dirname(audit) if audit else state_dir()
    return os.path.join(directory, f"placements{suffix}.json")


def _kind(path: str, lmode: int) -> str:
    if not stat.S_ISLNK(lmode):
        return describe(lmode)
    try:
        return f"a symbolic link to {describe(os.stat(path).st_mode)}"
    except OSError:
        return "a dangling symbolic link"


def _parent_problem(option: str, path: str) -> str | None:
    """The nearest existing ancestor of ``path`` must be a directory (the rest is created)."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):  # go up to what is there
            parent = os.path.dirname(parent)
            continue
        except OSError as exc:
            return f"{option} {path}: {parent}: {exc.strerror or exc}"
        if stat.S_ISDIR(mode):
            return None
        return f"{option} {path}: {parent} is {describe(mode)}, not a directory"


def _lstat(option: str, path: str) -> os.stat_result | str | None:
    """lstat, or None when nothing is there, or a problem message."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return _parent_problem(option, path) or f"{option} {path}: {exc.strerror}"
        return f"{option} {path}: {exc.strerror or exc}"


def check_control_path(path: str) -> str | None:
    """A problem with ``path`` as the control socket, or None.

    Only a socket may be there already: a stale one is replaced, a live daemon's is detected
    when the socket is opened. Anything else is someone's file, never removed.
    """
    found = _lstat("--control", path)
    if isinstance(found, str):
        return found
    if found is None:
        return _parent_problem("--control", path)
    if stat.S_ISSOCK(found.st_mode):
        return None
    return (
        f"--control {path} exists and is {_kind(path, found.st_mode)}, not a socket; "
        "not removing it"
    )


def check_audit_path(path: str) -> str | None:
    """A problem with ``path`` as the audit trail, or None: it must be a regular file (a
    symbolic link to one is followed) or not exist yet. Opening a FIFO would hang start-up."""
    found = _lstat("--audit", path)
    if isinstance(found, str):
        return found
    if found is None:
        return _parent_problem("--audit", path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # a dangling link: opening creates its target
        return _parent_problem("--audit", os.path.realpath(path))
    except OSError as exc:
        return f"--audit {path}: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"--audit {path} exists and is {_kind(path, found.st_mode)}, not a regular file"


def check_paths(control: str | None, audit: str | None) -> str | None:
    """The first problem with the daemon's paths (None: off, nothing to check)."""
    if control is not None and (problem := check_control_path(control)):
        return problem
    if audit is not None and (problem := check_audit_path(audit)):
        return problem
    return None
