"""Loading the shared key file with --no-ccs, with errors an operator can act on.

The file itself is read by ``ccs.source.read_key``, the same reader cluster.conf's key files
go through (raw bytes, at most 4096 of them, never blocking on a FIFO).
"""

from __future__ import annotations

import os
import stat

from ccs.limits import MAX_KEY_LEN
from ccs.source import read_key
from ccs.validate import KeyProblem
from xvmd.protocol.auth import Key


class KeyFileError(Exception):
    """The key file cannot be used; the message names the path and the problem."""


def load_key(path: str) -> tuple[Key, list[str]]:
    """Read a key file as the stock client does: raw bytes, at most 4096 of them.

    Returns:
        The key and a list of warnings (too long, readable by others).

    Raises:
        KeyFileError: missing, unreadable, not a regular file, or empty.
    """
    state = read_key(path)
    if state.data is None:
        if state.problem is KeyProblem.MISSING:
            raise KeyFileError(f"key file {path} does not exist")
        if state.problem is KeyProblem.NOT_REGULAR:
            what = "a directory" if os.path.isdir(path) else "not a regular file"
            raise KeyFileError(f"key file {path} is {what}")
        if state.problem is KeyProblem.DENIED:
            raise KeyFileError(f"key file {path} is not readable (permission denied)")
        raise KeyFileError(f"key file {path} cannot be read: {state.reason}")
    if not state.data:
        raise KeyFileError(f"key file {path} is empty; every signed request would be rejected")
    warnings = []
    if state.size > MAX_KEY_LEN:
        warnings.append(
            f"key file {path} is longer than {MAX_KEY_LEN} bytes; like fence_xvm, only the first "
            f"{MAX_KEY_LEN} are used"
        )
    if state.mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"key file {path} is accessible to group or others (mode {state.mode:04o}); "
            "use chmod 600"
        )
    return Key(state.data[:MAX_KEY_LEN]), warnings
