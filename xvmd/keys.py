"""Loading shared key files, with errors an operator can act on."""

from __future__ import annotations

import os
import stat

from .protocol.auth import Key
from .protocol.wire import MAX_KEY_LEN


class KeyFileError(Exception):
    """The key file cannot be used; the message names the path and the problem."""


def load_key(path: str) -> tuple[Key, list[str]]:
    """Read a key file as the stock client does: raw bytes, at most 4096 of them.

    Returns:
        The key and a list of warnings (too long, readable by others).

    Raises:
        KeyFileError: missing, unreadable, not a regular file, or empty.
    """
    warnings = []
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"key file {path} is not a regular file")
            data = fh.read(MAX_KEY_LEN + 1)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except PermissionError:
        raise KeyFileError(f"key file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise KeyFileError(f"key file {path} is a directory") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    if not data:
        raise KeyFileError(f"key file {path} is empty; every signed request would be rejected")
    if len(data) > MAX_KEY_LEN:
        warnings.append(
            f"key file {path} is longer than {MAX_KEY_LEN} bytes; like fence_xvm, only the first "
            f"{MAX_KEY_LEN} are used"
        )
        data = data[:MAX_KEY_LEN]
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"key file {path} is accessible to group or others"
            f" (mode {stat.S_IMODE(st.st_mode):04o});"
            " use chmod 600"
        )
    return Key(data), warnings
