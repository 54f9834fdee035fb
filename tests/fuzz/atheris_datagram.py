"""Coverage-guided fuzzing (atheris / libFuzzer) of the datagram reject path and the session.

Not collected by pytest and not run in CI; see docs/robustness.md.

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_datagram.py -runs=1000000
    .venv/bin/python tests/fuzz/atheris_datagram.py -runs=1000000 /tmp/xvmd-corpus  # reuse one

A corpus directory that is missing or empty is created and seeded with the captured reference
datagrams and TCP exchanges and with packets signed by the test key; without one, a seeded
``/tmp/xvmd-atheris-*`` is used (and printed; remove it afterwards). The first input byte
picks the target:

- even: the bytes are a datagram. ``parse_request`` must accept or raise ``MalformedRequest``;
  ``check_datagram`` must agree with the independent oracle and accept nothing but the seeds
  themselves (no forgery); ``FenceService.datagram_received`` must start no session and make
  no backend call.
- odd: the bytes drive a ``ServerSession`` (auth type, chunk sizes, clock steps, then the
  stream). Its challenge is derived from the input, so the answer cannot be in it: the session
  must never authenticate, raise, or send more than 128 bytes.

Any violation raises, and libFuzzer writes the crashing input to ``crash-*``.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris

# xvmd first, inside the hook: a module imported earlier (even indirectly) is not instrumented.
with atheris.instrument_imports(include=["xvmd"]):
    from xvmd.backend import DomainInfo, DomainState
    from xvmd.backend.fake import FakeBackend
    from xvmd.core.executor import BackendRunner
    from xvmd.core.operations import Clock
    from xvmd.core.policy import Policy
    from xvmd.core.service import FenceService, Hashes
    from xvmd.protocol.auth import check_datagram
    from xvmd.protocol.session import Phase, ServerSession
    from xvmd.protocol.wire import REQUEST_SIZE, HashType, MalformedRequest, Op, parse_request

from tests.fuzz import corpus
from tests.unit import refvectors

KEYS = [corpus.KEY]
BACKEND = FakeBackend(
    [DomainInfo("vm-01", "00000000-0000-4000-8000-000000000001", DomainState.RUNNING)]
)
SERVICE = FenceService(
    Hashes(HashType.SHA256, HashType.SHA256),
    Policy.unrestricted(KEYS),
    BackendRunner(BACKEND, Clock(time.monotonic, time.sleep), workers=1),
    now=time.monotonic,
)
SEEDS = [
    corpus.signed(op, "vm-01", hashtype=ht, seqno=i, port=1229)
    for i, (op, ht) in enumerate((op, ht) for op in Op for ht in corpus.SIGNED_TYPES)
]
GENUINE = set(SEEDS)
AUTHS = [HashType.SHA1, HashType.SHA256, HashType.SHA512]


def datagram(data: bytes) -> None:
    with contextlib.suppress(MalformedRequest):
        parse_request(data)
    if len(data) != REQUEST_SIZE:
        return
    minimum = HashType.SHA256
    got = check_datagram(data, minimum, KEYS)
    if got != corpus.oracle(data, minimum, KEYS):
        raise AssertionError(f"reject path disagrees with the oracle: {got}")
    if got[1] is None:
        if data not in GENUINE:
            raise AssertionError(f"forged datagram accepted: {data.hex()}")
        return  # a seed itself: it would start a session, which needs an event loop
    before = sum(SERVICE.stats.dropped.values())
    SERVICE.datagram_received(data, ("192.0.2.1", 1229))
    if SERVICE.active_sessions or BACKEND.calls:
        raise AssertionError("a rejected datagram started a session")
    if sum(SERVICE.stats.dropped.values()) != before + 1:
        raise AssertionError("a rejected datagram was not counted")


def session(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    auth = AUTHS[fdp.ConsumeIntInRange(0, 2)]
    challenge = hashlib.sha512(data).digest()  # depends on the whole input
    now = 0.0
    s = ServerSession(auth=auth, key=corpus.KEY, challenge=challenge, now=now)
    out = b""
    while fdp.remaining_bytes():
        step = fdp.ConsumeIntInRange(0, 3)
        if step == 0:
            now += fdp.ConsumeIntInRange(0, 20_000) / 1000
            s.handle_timer(now)
        elif step == 1 and fdp.ConsumeBool():
            s.connection_closed()
        else:
            s.receive_data(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 130)), now)
        out += s.data_to_send()
        if s.phase is Phase.AUTHENTICATED:
            raise AssertionError("authenticated without the answer")
        if len(out) > 128:
            raise AssertionError(f"{len(out)} bytes sent before authentication")
    if s.phase in (Phase.AUTHENTICATED, Phase.DONE):
        raise AssertionError("authenticated without the answer")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        datagram(data[1:])
    else:
        session(data[1:])


def _seed(path: Path) -> None:
    items = [b"\0" + s for s in SEEDS] + [b"\0" + d for d in corpus.reference_datagrams()]
    for ex in refvectors.tcp_exchanges():
        items.append(b"\x01\x01" + b"".join(ex.client()))
    for i, item in enumerate(items):
        (path / f"seed-{i:03d}").write_bytes(item)


def main() -> None:
    argv = list(sys.argv)
    dirs = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [Path(tempfile.mkdtemp(prefix="xvmd-atheris-"))]
        argv.append(str(dirs[0]))
        print(f"corpus: {dirs[0]}", file=sys.stderr)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        if not any(d.iterdir()):
            _seed(d)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
