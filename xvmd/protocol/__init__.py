"""The pure fence_xvm protocol core: wire format, signatures, sessions, duplicate history.

Nothing in this package does I/O, reads the clock or draws randomness; see docs/architecture.md.
"""

from xvmd.protocol.auth import Key, Rejected, sign_request, verify_request
from xvmd.protocol.history import Admission, History
from xvmd.protocol.session import Phase, ServerSession
from xvmd.protocol.wire import (
    REQUEST_SIZE,
    FenceRequest,
    HashType,
    HostRecord,
    MalformedRequest,
    Op,
    Result,
    encode_hostlist,
    encode_request,
    parse_request,
)

__all__ = [
    "REQUEST_SIZE",
    "Admission",
    "FenceRequest",
    "HashType",
    "History",
    "HostRecord",
    "Key",
    "MalformedRequest",
    "Op",
    "Phase",
    "Rejected",
    "Result",
    "ServerSession",
    "encode_hostlist",
    "encode_request",
    "parse_request",
    "sign_request",
    "verify_request",
]
