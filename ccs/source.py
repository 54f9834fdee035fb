"""File I/O for the config layer: the cluster.conf bytes and the key files it names."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable

from .model import Cluster
from .validate import MAX_KEY_LEN, KeyState


class SourceError(Exception):
    """cluster.conf itself cannot be read; the message names the path and the reason."""


def read_config(path: str) -> bytes:
    """Raises SourceError."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory") from None
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None


def read_key(path: str) -> KeyState:
    try:
        # stat first and open non-blocking: opening a FIFO would otherwise wait for a writer.
        if not stat.S_ISREG(os.stat(path).st_mode):
            return KeyState(path, None, "not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return KeyState(path, None, "not a regular file")
            data = fh.read(MAX_KEY_LEN + 1)
    except FileNotFoundError:
        return KeyState(path, None, "missing")
    except PermissionError:
        return KeyState(path, None, "unreadable: permission denied")
    except IsADirectoryError:
        return KeyState(path, None, "not a regular file")
    except OSError as exc:
        return KeyState(path, None, f"unreadable: {exc.strerror or exc}")
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
