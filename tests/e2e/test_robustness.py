"""Duplicates, failed callbacks, garbage and start-up errors, against a running xvmd."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import XvmdFactory
from tests.support import pyclient
from tests.support.harness import Netns, fence_xvm, run_xvmd_once
from tests.support.inside import enter_netns
from xvmd.protocol.auth import Key
from xvmd.protocol.history import CALLBACK_BACKOFF
from xvmd.protocol.wire import HashType, Op

pytestmark = pytest.mark.e2e


def run_in_netns(netns: Netns, fn, *args):  # type: ignore[no-untyped-def]
    """Run ``fn(*args)`` in a forked child inside ``netns``; return its result via a pipe."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            enter_netns(netns)
            payload = pickle.dumps(("ok", fn(*args)))
        except BaseException as exc:  # report everything to the parent
            payload = pickle.dumps(("err", repr(exc)))
            code = 1
        with os.fdopen(w, "wb") as fh:
            fh.write(payload)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        raise AssertionError(f"child failed: {value}")
    return value


def _duplicate_scenario(port: int, key_bytes: bytes) -> tuple[int | None, bool, int | None]:
    key = Key(key_bytes)
    lst = pyclient.callback_listener()
    cb_port = lst.getsockname()[1]
    pkt = pyclient.build(Op.STATUS, "vm-11", key, port=cb_port, seqno=4242)
    first = pyclient.request(pkt, ("225.0.0.12", port), lst, key)
    # The same op + seqno, domain in another case, new random: a retransmit. Dropped.
    again = pyclient.build(Op.STATUS, "VM-11", key, port=cb_port, seqno=4242)
    second = pyclient.request(again, ("225.0.0.12", port), lst, key, wait=1.5)
    # Another op with the same seqno is a different request.
    other = pyclient.build(Op.OFF, "vm-11", key, port=cb_port, seqno=4242)
    third = pyclient.request(other, ("127.0.0.1", port), lst, key)  # unicast works too
    return first.result, second.connected, third.result


def test_duplicates_are_dropped_and_logged(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    first, second_connected, third = run_in_netns(
        netns, _duplicate_scenario, d.port, key_file.read_bytes()
    )
    assert first == 0
    assert second_connected is False
    assert third == 0
    assert d.wait_for_log("duplicate status 'VM-11' seqno 4242 from 127.0.0.1 dropped")


def _failed_callback_scenario(port: int, key_bytes: bytes) -> tuple[bool, int | None]:
    key = Key(key_bytes)
    # A port nobody listens on: the callback is refused, so nothing is recorded.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    pkt = pyclient.build(Op.STATUS, "vm-12", key, port=dead_port, seqno=777)
    pyclient.send_datagram(pkt, ("127.0.0.1", port))
    lst = pyclient.callback_listener()
    import time

    time.sleep(0.3)
    # A copy right after the failure is not called back (the back-off after a failed callback)
    early = pyclient.build(Op.STATUS, "vm-12", key, port=lst.getsockname()[1], seqno=777)
    assert not pyclient.request(early, ("127.0.0.1", port), lst, key, wait=0.3).connected
    time.sleep(CALLBACK_BACKOFF)
    # ... the client's next retransmit (2 s later by default) is.
    retry = pyclient.build(Op.STATUS, "vm-12", key, port=lst.getsockname()[1], seqno=777)
    reply = pyclient.request(retry, ("127.0.0.1", port), lst, key)
    return reply.connected, reply.result


def test_failed_callback_is_not_recorded(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    connected, result = run_in_netns(
        netns, _failed_callback_scenario, d.port, key_file.read_bytes()
    )
    assert d.wait_for_log("cannot call back 127.0.0.1")
    assert connected and result == 0, d.log()


def _garbage_scenario(port: int, key_bytes: bytes, count: int) -> int | None:
    key, wrong = Key(key_bytes), Key(os.urandom(64))
    rng = random.Random(1229)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        if i % 2:
            data = rng.randbytes(rng.choice([0, 1, 64, 175, 177, 500, 1400]))
        else:  # well-formed but signed with the wrong key
            data = pyclient.build(Op.OFF, "vm-13", wrong, port=9, seqno=i)
        sock.sendto(data, ("127.0.0.1", port))
    sock.close()
    lst = pyclient.callback_listener()
    pkt = pyclient.build(Op.STATUS, "vm-13", key, port=lst.getsockname()[1])
    return pyclient.request(pkt, ("127.0.0.1", port), lst, key).result


def test_garbage_datagrams_are_counted_and_valid_requests_still_served(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    result = run_in_netns(netns, _garbage_scenario, d.port, key_file.read_bytes(), 2000)
    assert result == 0
    real = fence_xvm(
        netns, "-p", str(d.port), "-k", str(key_file), "-t", "5", "-o", "status", "-H", "vm-13"
    )
    assert real.rc == 0
    d.stop()
    log = d.log()
    assert "bad-signature 1000" in log, log
    assert "size 1000" in log or "size 9" in log, log  # every odd one has a wrong size
    assert "off 'vm-13'" not in log


def _null_scenario(port: int, key_bytes: bytes) -> int | None:
    key = Key(key_bytes)
    lst = pyclient.callback_listener()
    pkt = pyclient.build(Op.NULL, "vm-01", key, port=lst.getsockname()[1])
    return pyclient.request(pkt, ("127.0.0.1", port), lst, key, op=Op.NULL).result


def test_null_answers_failure_like_the_reference_daemons(
    start_xvmd: XvmdFactory, netns: Netns, key_file: Path
) -> None:
    d = start_xvmd()
    assert run_in_netns(netns, _null_scenario, d.port, key_file.read_bytes()) == 1


def _hash_none_scenario(port: int) -> int | None:
    key = Key(b"")
    lst = pyclient.callback_listener()
    pkt = pyclient.build(Op.STATUS, "vm-01", key, hashtype=HashType.NONE, port=lst.getsockname()[1])
    return pyclient.request(pkt, ("127.0.0.1", port), lst, key, auth=HashType.NONE).result


def test_unsigned_requests_need_hash_none(start_xvmd: XvmdFactory, netns: Netns) -> None:
    strict = start_xvmd()
    assert run_in_netns(netns, _hash_none_scenario, strict.port) is None
    open_ = start_xvmd("--hash", "none", "--auth", "none")
    assert "authentication is OFF" in open_.log()
    assert run_in_netns(netns, _hash_none_scenario, open_.port) == 0


# -- start-up errors -------------------------------------------------------------------------


def _args(port: int, key: str, *extra: str) -> list[str]:
    return [
        "--local",
        "--no-ccs",
        "-k",
        key,
        "-I",
        "lo",
        "-p",
        str(port),
        "-U",
        "test:///default",
        *extra,
    ]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("directory", "is a directory"),
    ],
)
def test_unusable_key_file_refuses_to_start(
    netns: Netns, tmp_path: Path, port: int, setup: str, message: str
) -> None:
    path = tmp_path / "k"
    if setup == "empty":
        path.write_bytes(b"")
    elif setup == "directory":
        path.mkdir()
    res = run_xvmd_once(netns, _args(port, str(path)))
    assert res.rc == 1
    assert str(path) in res.stderr and message in res.stderr, res.stderr
    assert "refusing to run without authentication" in res.stderr


def test_port_in_use_says_so(start_xvmd: XvmdFactory, netns: Netns, key_file: Path) -> None:
    d = start_xvmd()
    res = run_xvmd_once(netns, _args(d.port, str(key_file)))
    assert res.rc == 1
    assert "address already in use" in res.stderr, res.stderr


def test_unknown_interface_says_so(netns: Netns, key_file: Path, port: int) -> None:
    args = _args(port, str(key_file))
    args[args.index("lo")] = "nosuch0"
    res = run_xvmd_once(netns, args)
    assert res.rc == 1
    assert "'nosuch0' does not exist" in res.stderr, res.stderr


def test_bad_flag_value_is_a_usage_error(netns: Netns, key_file: Path) -> None:
    res = run_xvmd_once(netns, _args(0, str(key_file)))
    assert res.rc == 2
    assert "usage:" in res.stderr
