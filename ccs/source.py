"""File I/O for the config layer: the cluster.conf bytes and the key files it names."""

from __future__ import annotations

import os
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
