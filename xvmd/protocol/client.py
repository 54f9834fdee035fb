"""The fence_xvm client's side of one request, without I/O: the datagram, then the TCP exchange.

Rules for this module (as for ``session``, its mirror image):
1. Bytes come in (``receive_data``), bytes to write go out (``data_to_send``). The shell owns the
   sockets and the timeouts (the stock client times out each read); randomness (the salt of a
   signed request, our 64-byte challenge) is passed in.
2. Every way a daemon can let us down raises ``ClientError`` with a stable ``reason`` tag, and the
   session stays failed: there is no partial or guessed answer.

The exchange as the client sees it (the auth type is configured on both ends, never sent):

    phase             client -> daemon      daemon -> client
                      C1 (64 bytes)
    AWAIT_ANSWER                            pad64(H(key||C1))
    AWAIT_CHALLENGE                         C2 (64 bytes)
                      pad64(H(key||C2))
    AWAIT_RESULT                            one result byte; 0xFD (to ``list``): a hostlist
    AWAIT_RECORDS                           130-byte records, then an all-zero terminator
    AWAIT_FINAL                             the hostlist's own result byte
    DONE

With auth NONE the session starts in AWAIT_RESULT and sends nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from xvmd.protocol.auth import Key, sign_request
from xvmd.protocol.wire import (
    CHALLENGE_SIZE,
    HOST_RECORD_SIZE,
    HashType,
    HostRecord,
    Op,
    Result,
    decode_host_record,
    encode_request,
)

ZERO_SALT = b"\0" * 6

# ``fence_xvm -o`` actions that go on the wire; ``metadata`` is answered by the client itself.
_ACTIONS = {
    "null": Op.NULL,
    "off": Op.OFF,
    "reboot": Op.REBOOT,
    "on": Op.ON,
    "status": Op.STATUS,
    "monitor": Op.DEVSTATUS,
    "devstatus": Op.DEVSTATUS,
    "list": Op.HOSTLIST,
    "hostlist": Op.HOSTLIST,
}


def op_for_action(action: str) -> Op:
    """The request code for a ``fence_xvm -o`` action.

    Raises:
        ValueError: ``metadata`` (printed locally, never sent) or an unknown action.
    """
    name = action.lower()
    if name == "metadata":
        raise ValueError("metadata is printed by the client itself; it has no request code")
    try:
        return _ACTIONS[name]
    except KeyError:
        raise ValueError(f"unknown action {action!r}") from None


def build_request(
    op: Op,
    domain: str = "",
    *,
    key: Key | None,
    hashtype: HashType,
    address: str | None,
    port: int,
    seqno: int,
    salt: bytes = ZERO_SALT,
) -> bytes:
    """The signed 176-byte request datagram, as the stock client sends it.

    ``salt`` (6 random bytes) is used only when signing: the stock client leaves it zero in an
    unsigned request, and so do we, so that unsigned requests match its bytes.

    Raises:
        ValueError: a signed hash type without a key, or a field that does not fit.
    """
    if hashtype is HashType.NONE:
        return encode_request(op, domain, address=address, port=port, seqno=seqno)
    if key is None or not key.data:
        raise ValueError(f"a {hashtype.label} signature needs a key")
    raw = encode_request(
        op, domain, address=address, port=port, seqno=seqno, hashtype=hashtype, random=salt
    )
    return sign_request(raw, hashtype, key)


class ClientError(Exception):
    """The daemon broke the exchange; ``reason`` is a short stable tag.

    Reasons: ``bad-answer`` (its answer to our challenge is wrong: another key or auth type),
    ``closed`` (it closed early), ``unknown-result`` (a result byte no daemon sends),
    ``unexpected-hostlist`` (a hostlist for another op), ``trailing-data`` (bytes after the end).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ClientPhase(enum.Enum):
    AWAIT_ANSWER = "await-answer"
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_RESULT = "await-result"
    AWAIT_RECORDS = "await-records"
    AWAIT_FINAL = "await-final"
    DONE = "done"
    FAILED = "failed"


# Bytes that complete each phase; the daemon sends its answer and C2 in one go, so the
# shell may read both at once (see ``bytes_wanted``).
_STEP = {
    ClientPhase.AWAIT_ANSWER: 2 * CHALLENGE_SIZE,
    ClientPhase.AWAIT_CHALLENGE: CHALLENGE_SIZE,
    ClientPhase.AWAIT_RESULT: 1,
    ClientPhase.AWAIT_RECORDS: HOST_RECORD_SIZE,
    ClientPhase.AWAIT_FINAL: 1,
}


@dataclass(frozen=True, slots=True)
class Answer:
    """What the daemon answered: the result byte, and for a hostlist its records and final byte."""

    result: Result
    records: tuple[HostRecord, ...] = ()
    final: Result | None = None

    @property
    def status(self) -> Result:
        """The outcome: the result byte, or a hostlist's final byte."""
        return self.final if self.final is not None else self.result


class ClientSession:
    """One TCP exchange, client side, from the daemon's connect-back to its last byte."""

    def __init__(
        self, op: Op, *, auth: HashType, key: Key | None, challenge: bytes | None = None
    ) -> None:
        self.op = op
        self._auth = auth
        self._key = key
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._records: list[HostRecord] = []
        self._result: Result | None = None
        self.answer: Answer | None = None
        self.error: ClientError | None = None
        if auth is HashType.NONE:
            self._challenge = b""
            self.phase = ClientPhase.AWAIT_RESULT
            return
        if key is None or not key.data:
            raise ValueError("authentication needs a key")
        if challenge is None or len(challenge) != CHALLENGE_SIZE:
            raise ValueError(f"challenge must be {CHALLENGE_SIZE} bytes")
        self._challenge = challenge
        self._outbox += challenge  # we challenge first, as the stock client does
        self.phase = ClientPhase.AWAIT_ANSWER

    @property
    def done(self) -> bool:
        return self.phase is ClientPhase.DONE

    @property
    def bytes_wanted(self) -> int:
        """How many bytes the shell may read now without reading past what the daemon sends
        before it waits for us (0: the session is over)."""
        step = _STEP.get(self.phase, 0)
        return max(step - len(self._inbox), 0)

    def data_to_send(self) -> bytes:
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def receive_data(self, data: bytes) -> Answer | None:
        """Feed bytes from the daemon; returns the answer once it is complete.

        Raises:
            ClientError: the daemon broke the exchange (now, or earlier in this session).
        """
        if self.error is not None:
            raise self.error
        if self.phase is ClientPhase.DONE:
            if data:
                self._fail("trailing-data", f"{len(data)} bytes after the end of the answer")
            return self.answer
        self._inbox += data
        while not self.done and len(self._inbox) >= self._need():
            self._step(self._take(self._need()))
        if self.done and self._inbox:
            self._fail("trailing-data", f"{len(self._inbox)} bytes after the end of the answer")
        return self.answer

    def connection_closed(self) -> Answer:
        """The daemon closed the connection: the answer if it was complete.

        Raises:
            ClientError: it closed before the end (``closed``), or the session had failed.
        """
        if self.error is not None:
            raise self.error
        if self.answer is None:
            have = f" ({len(self._inbox)} of {self._need()} bytes)" if self._inbox else ""
            self._fail("closed", f"the daemon closed the connection in {self.phase.value}{have}")
        assert self.answer is not None
        return self.answer

    def _need(self) -> int:
        # The answer to C1 is checked alone, before C2: a wrong one fails at once.
        return CHALLENGE_SIZE if self.phase is ClientPhase.AWAIT_ANSWER else _STEP[self.phase]

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._inbox[:n])
        del self._inbox[:n]
        return chunk

    def _step(self, chunk: bytes) -> None:
        if self.phase is ClientPhase.AWAIT_ANSWER:
            assert self._key is not None
            if not self._key.matches(self._auth, self._challenge, chunk):
                self._fail(
                    "bad-answer",
                    "the daemon answered our challenge wrongly (wrong key or auth type)",
                )
            self.phase = ClientPhase.AWAIT_CHALLENGE
        elif self.phase is ClientPhase.AWAIT_CHALLENGE:
            assert self._key is not None
            self._outbox += self._key.digest(self._auth, chunk)
            self.phase = ClientPhase.AWAIT_RESULT
        elif self.phase is ClientPhase.AWAIT_RESULT:
            self._on_result(chunk[0])
        elif self.phase is ClientPhase.AWAIT_RECORDS:
            record = decode_host_record(chunk)
            if record is None:  # the terminator: no name and no UUID, as the stock client reads it
                self.phase = ClientPhase.AWAIT_FINAL
            else:
                self._records.append(record)
        else:
            final = self._result_of(chunk[0])
            assert self._result is not None
            self._finish(Answer(self._result, tuple(self._records), final))

    def _on_result(self, byte: int) -> None:
        result = self._result_of(byte)
        if result is not Result.HOSTLIST:
            self._finish(Answer(result))
        elif self.op is not Op.HOSTLIST:
            self._fail("unexpected-hostlist", f"a hostlist in answer to {self.op.label}")
        else:
            self._result = result
            self.phase = ClientPhase.AWAIT_RECORDS

    def _result_of(self, byte: int) -> Result:
        try:
            result = Result(byte)
        except ValueError:
            self._fail("unknown-result", f"unknown result byte {byte:#04x}")
        if self.phase is ClientPhase.AWAIT_FINAL and result is Result.HOSTLIST:
            self._fail("unknown-result", "a second hostlist marker instead of the final result")
        return result

    def _finish(self, answer: Answer) -> None:
        self.answer = answer
        self.phase = ClientPhase.DONE

    def _fail(self, reason: str, detail: str) -> NoReturn:
        self.phase = ClientPhase.FAILED
        self.answer = None
        self._outbox.clear()
        self.error = ClientError(reason, detail)
        raise self.error


def drive(
    session: ClientSession, recv: Callable[[int], bytes], send: Callable[[bytes], None]
) -> Answer:
    """Run ``session`` over a blocking stream, for the blocking shells (asyncio ones loop
    themselves): ``recv(n)`` returns up to n bytes, b"" at the end; ``send`` writes all of its
    argument. Reads never go past the answer, so the daemon's close is not awaited.

    Raises:
        ClientError: as ``receive_data`` and ``connection_closed``.
    """
    while True:
        out = session.data_to_send()
        if out:
            send(out)
        if session.answer is not None:
            return session.answer
        data = recv(session.bytes_wanted)
        if not data:
            return session.connection_closed()
        session.receive_data(data)
