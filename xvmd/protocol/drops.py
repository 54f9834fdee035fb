"""Why a request was dropped: the one vocabulary of drop counters.

Each value is the name an operator sees: the ``dropped`` counters of ``xvmd status`` (and its
JSON), the periodic totals line, the rate-limited log lines; docs/security.md and
docs/protocol.md explain each. A ``StrEnum`` member is its string, so counters keyed by it
serialise exactly as the plain strings did. Values never change: they are an interface.

It lives in ``protocol/`` because the reject path (``auth``) names reasons too, and
``protocol/`` never imports ``core/``.
"""

from __future__ import annotations

from enum import StrEnum


class DropReason(StrEnum):
    # -- the reject path: per packet, no state (auth.check_datagram, wire.parse_request) -------
    SIZE = "size"  # not 176 bytes
    OP = "op"  # unknown request code
    HASHTYPE = "hashtype"  # unknown hash type
    FAMILY = "family"  # unknown address family
    WEAK_HASH = "weak-hash"  # weaker than --hash
    NO_KEY = "no-key"  # needs a key and none is loaded
    BAD_SIGNATURE = "bad-signature"  # matches no loaded key
    FORGED = "forged"  # signature made by length extension of a challenge answer (an attack)

    # -- intake: checks without I/O before a connect-back (core.intake) ------------------------
    NO_CALLBACK = "no-callback"  # names no callback address
    BAD_CALLBACK = "bad-callback"  # a callback address no client can listen on
    REPLAYED = "replayed"  # seen before, longer ago than any retransmit
    UNSIGNED_AMBIGUOUS = "unsigned-ambiguous"  # unsigned, and several keys could answer
    INQUORATE = "inquorate"  # a power action while this host is not quorate
    NOT_A_NODE = "not-a-node"  # cluster mode: the requester is no cluster node
    DUPLICATE = "duplicate"  # a copy of a request handled a moment ago
    CALLBACK_BACKOFF = "callback-backoff"  # a copy of a request whose callback just failed
    CALLBACK_BUSY = "callback-busy"  # too many sessions calling back one address and port
    BUSY = "busy"  # too many sessions in all
    LISTENER_BUSY = "listener-busy"  # the TCP listener is full
    LISTENER_PEER_BUSY = "listener-peer-busy"  # too many TCP clients from one peer
    ALTERNATE = "alternate"  # a copy kept as another callback to try: never counted

    # -- sessions: after I/O began (core.service, core.pipeline) --------------------------------
    STREAM_INCOMPLETE = "stream-incomplete"  # a TCP client sent no complete request in time
    CALLBACK_FAILED = "callback-failed"  # no callback address of the request answered
    AUTH_FAILED = "auth-failed"  # the challenge-response failed
    REFLECTION = "reflection"  # the client sent back a challenge a daemon issued (an attack)
