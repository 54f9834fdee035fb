"""File I/O for the config layer: the cluster.conf bytes and the key files it names.

Rules:
1. A path is stat'ed before it is opened, and opened non-blocking: a FIFO, a device or a
   directory in its place is refused at once, never waited on or read without end.
2. At most a bounded number of bytes is read from any file (MAX_CONFIG_BYTES, MAX_KEY_LEN + 1).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable

from .issues import Code
from .limits import MAX_CONFIG_BYTES, MAX_KEY_LEN
from .model import Cluster
from .validate import KeyProblem, KeyState

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


class SourceError(Exception):
    """cluster.conf itself cannot be read; the message names the path and the reason, ``code``
    the problem code to report it under."""

    def __init__(self, message: str, code: Code = Code.CONFIG_UNREADABLE) -> None:
        super().__init__(message)
        self.code = code


class _NotRegular(Exception):
    """The path (after symlinks) is not a regular file; the message says what it is."""


def describe(mode: int) -> str:
    """What kind of file ``mode`` says, as an article and a noun ("a FIFO")."""
    return next((what for test, what in _KINDS if test(mode)), "a special file")


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """An fd open on ``path`` and its fstat, once both stat and fstat say regular file.

    Raises:
        _NotRegular: with what the path is instead.
        OSError: from stat or open.
    """
    # stat first: even a non-blocking open of a device can have side effects.
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _NotRegular(describe(st.st_mode))
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)  # the path may have been swapped between stat and open
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular(describe(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_config(path: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of cluster.conf, at most ``limit`` of them.

    Raises:
        SourceError: missing, unreadable or not a regular file (``config-unreadable``), or
            larger than ``limit`` bytes (``config-too-large``).
    """
    try:
        fd, st = _open_regular(path)
    except _NotRegular as exc:
        raise SourceError(f"{path}: is {exc}, not a regular file") from None
    except OSError as exc:
        raise SourceError(_os_reason(path, exc)) from None
    try:
        if st.st_size > limit:
            raise _too_large(f"{path}: is {st.st_size} bytes, more than the {limit} allowed")
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise SourceError(_os_reason(path, exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _too_large(f"{path}: grew past the {limit} bytes allowed while it was read")
    return data


def _too_large(message: str) -> SourceError:
    return SourceError(message, Code.CONFIG_TOO_LARGE)


def _os_reason(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(exc, PermissionError):
        return f"{path}: permission denied"
    return f"{path}: {exc.strerror or exc}"


def read_key(path: str) -> KeyState:
    """What is at a key path: its first MAX_KEY_LEN + 1 bytes, size and mode, or the problem
    ("missing", "not a regular file", "unreadable: WHY")."""
    try:
        fd, st = _open_regular(path)
    except _NotRegular:
        return KeyState(path, None, KeyProblem.NOT_REGULAR)
    except FileNotFoundError:
        return KeyState(path, None, KeyProblem.MISSING)
    except PermissionError:
        return KeyState(path, None, KeyProblem.DENIED)
    except OSError as exc:
        return KeyState(path, None, KeyProblem.UNREADABLE, detail=str(exc.strerror or exc))
    try:
        data = _read_at_most(fd, MAX_KEY_LEN + 1)
    except OSError as exc:
        return KeyState(path, None, KeyProblem.UNREADABLE, detail=str(exc.strerror or exc))
    finally:
        os.close(fd)
    return KeyState(path, data, None, st.st_size, stat.S_IMODE(st.st_mode))


def key_paths(cluster: Cluster) -> list[str]:
    return sorted({cluster.key_path(d) for d in cluster.devices if d.is_xvm})


def read_keys(paths: Iterable[str]) -> dict[str, KeyState]:
    return {p: read_key(p) for p in paths}


RESOLVE_TIMEOUT = 3.0


def _lookup(name: str) -> tuple[str, ...]:
    try:
        return (str(ipaddress.ip_address(name)),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return ()
    return tuple(sorted({str(ipaddress.ip_address(str(i[4][0]).split("%")[0])) for i in infos}))


def resolve(names: Iterable[str], timeout: float = RESOLVE_TIMEOUT) -> dict[str, tuple[str, ...]]:
    """The addresses each name resolves to through the system resolver (/etc/hosts, DNS); an
    IP literal is its own address. Lookups run in parallel and all together get ``timeout``
    seconds, so a slow DNS server cannot stall a reload; what is not resolved by then maps to
    an empty tuple (and gets an ``unresolved-node`` warning)."""
    unique = list(dict.fromkeys(names))
    out: dict[str, tuple[str, ...]] = {n: () for n in unique}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, max(len(unique), 1)))
    futures = {pool.submit(_lookup, n): n for n in unique}
    try:
        for fut in concurrent.futures.as_completed(futures, timeout=timeout):
            out[futures[fut]] = fut.result()
    except TimeoutError:
        pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return out
