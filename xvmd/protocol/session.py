"""The daemon's side of one TCP exchange, as a state machine without I/O.

Rules for this module:
1. Bytes and the current time come in (``receive_data``, ``handle_timer``); bytes to write and a
   deadline go out (``data_to_send``, ``deadline``). The shell owns the socket and the clock.
2. Once failed, a session stays failed and sends nothing more.

The exchange (the client challenges first; the auth type is configured on both ends, never sent):

    phase             client -> daemon      daemon -> client
    AWAIT_CHALLENGE   C1 (64 bytes)
                                            pad64(H(key||C1)), then C2 (64 bytes)
    AWAIT_RESPONSE    pad64(H(key||C2))
    AUTHENTICATED                           one result byte, or the hostlist stream
    DONE

With auth NONE the session starts AUTHENTICATED. Each waiting phase has its own deadline.

The daemon's C2 comes from ``Key.tagged_challenge``; a C1 carrying a valid tag is one that some
daemon holding this key issued, sent back to get it answered (reflection): the session fails
without answering (see ``auth.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from xvmd.protocol.auth import Key
from xvmd.protocol.wire import CHALLENGE_SIZE, HashType, HostRecord, Result, encode_hostlist

AUTH_STEP_TIMEOUT = 10.0
"""Seconds the daemon waits for each client message during authentication."""
CONNECT_TIMEOUT = 5.0
"""Seconds the daemon allows for the TCP connect-back."""
STREAM_REQUEST_TIMEOUT = 1.0
"""Seconds a client of the TCP listener has to send its 176-byte request."""


class Phase(enum.Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_RESPONSE = "await-response"
    AUTHENTICATED = "authenticated"
    DONE = "done"
    FAILED = "failed"


class ServerSession:
    """Challenge-response and result for one request, daemon side."""

    def __init__(
        self,
        *,
        auth: HashType,
        key: Key | None,
        challenge: bytes,
        now: float,
        step_timeout: float = AUTH_STEP_TIMEOUT,
    ) -> None:
        if auth is not HashType.NONE and (key is None or not key.data):
            raise ValueError("authentication needs a key")
        if len(challenge) != CHALLENGE_SIZE:
            raise ValueError(f"challenge must be {CHALLENGE_SIZE} bytes")
        self._auth = auth
        self._key = key
        self._challenge = challenge
        self._step_timeout = step_timeout
        self._inbox = bytearray()
        self._outbox = bytearray()
        self.failure: str | None = None
        self.reflected = False
        """True when the client sent back a challenge this daemon issued: an attack."""
        self.deadline: float | None
        if auth is HashType.NONE:
            self.phase = Phase.AUTHENTICATED
            self.deadline = None
        else:
            self.phase = Phase.AWAIT_CHALLENGE
            self.deadline = now + step_timeout

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes the current phase needs before it can move on (0: none)."""
        if self.phase in (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE):
            return max(CHALLENGE_SIZE - len(self._inbox), 0)
        return 0

    def data_to_send(self) -> bytes:
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def receive_data(self, data: bytes, now: float) -> None:
        if self.phase not in (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE):
            return
        self._inbox += data
        if self.phase is Phase.AWAIT_CHALLENGE and len(self._inbox) >= CHALLENGE_SIZE:
            c1 = bytes(self._inbox[:CHALLENGE_SIZE])
            del self._inbox[:CHALLENGE_SIZE]
            assert self._key is not None
            if self._key.is_tagged(c1):
                self.reflected = True
                self._fail("the client's challenge is one a daemon issued (reflection attack)")
                return
            self._outbox += self._key.digest(self._auth, c1)
            self._outbox += self._challenge
            self.phase = Phase.AWAIT_RESPONSE
            self.deadline = now + self._step_timeout
        if self.phase is Phase.AWAIT_RESPONSE and len(self._inbox) >= CHALLENGE_SIZE:
            answer = bytes(self._inbox[:CHALLENGE_SIZE])
            del self._inbox[:CHALLENGE_SIZE]
            assert self._key is not None
            if self._key.matches(self._auth, self._challenge, answer):
                self.phase = Phase.AUTHENTICATED
                self.deadline = None
            else:
                self._fail("client answered our challenge wrongly (wrong key or auth type)")

    def connection_closed(self) -> None:
        """The peer closed before the session finished."""
        if self.phase in (Phase.AWAIT_CHALLENGE, Phase.AWAIT_RESPONSE):
            self._fail(f"client closed the connection during {self.phase.value}")

    def handle_timer(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            self._fail(f"timed out in {self.phase.value}")

    def send_result(self, result: Result) -> None:
        self._require_authenticated()
        self._outbox.append(int(result))
        self.phase = Phase.DONE

    def send_hostlist(self, records: Iterable[HostRecord], final: Result = Result.SUCCESS) -> None:
        self._require_authenticated()
        self._outbox += encode_hostlist(records, final)
        self.phase = Phase.DONE

    def _require_authenticated(self) -> None:
        if self.phase is not Phase.AUTHENTICATED:
            raise RuntimeError(f"cannot answer in phase {self.phase.value}")

    def _fail(self, why: str) -> None:
        self.phase = Phase.FAILED
        self.failure = why
        self.deadline = None
        self._outbox.clear()
