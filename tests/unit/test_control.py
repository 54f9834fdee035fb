"""The control socket (xvmd/daemon/control.py) against the client ``xvmd status`` uses
(``control.query``): the document goes over, a stale socket is replaced, what is not a socket is
never touched, and peers that send garbage, hang up, stall or crowd in change nothing.

Each test serves on its own event loop with ``asyncio.run``; the blocking ``query`` runs in a
thread of that loop, as ``xvmd status`` runs in a process of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from xvmd.daemon import control

T = TypeVar("T")
DOC: dict[str, Any] = {"version": "0.1.0", "pid": 42, "listeners": ["225.0.0.12 port 1229"]}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ctl.sock"


def serving(
    path: Path, status: Callable[[], dict[str, Any]], body: Callable[[], Awaitable[T]]
) -> T:
    """Serve ``status`` on ``path`` while ``body()`` runs; the server is closed afterwards."""

    async def main() -> T:
        server = await control.serve(str(path), status)
        try:
            return await body()
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def query(path: Path, timeout: float = 2.0) -> Awaitable[dict[str, Any]]:
    return asyncio.to_thread(control.query, str(path), timeout)


def test_serves_the_document_to_the_status_client(path: Path) -> None:
    calls: list[int] = []

    def status() -> dict[str, Any]:
        calls.append(1)
        return {**DOC, "answered": len(calls)}

    async def body() -> list[dict[str, Any]]:
        return [await query(path), await query(path)]

    first, second = serving(path, status, body)
    assert first == {**DOC, "answered": 1}
    assert second["answered"] == 2  # asked afresh on every connection, never cached


def test_values_json_cannot_hold_are_sent_as_text(path: Path) -> None:
    async def body() -> dict[str, Any]:
        return await query(path)

    doc = serving(path, lambda: {"where": Path("/run/xvmd"), "ring": (1, 8)}, body)
    assert doc == {"where": "/run/xvmd", "ring": [1, 8]}


def test_the_socket_is_for_root_only(path: Path) -> None:
    async def body() -> int:
        return os.stat(path).st_mode

    mode = serving(path, lambda: DOC, body)
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_missing_directories_are_created(tmp_path: Path) -> None:
    deep = tmp_path / "run" / "xvmd" / "ctl.sock"

    async def body() -> dict[str, Any]:
        return await query(deep)

    assert serving(deep, lambda: DOC, body) == DOC
    assert (tmp_path / "run" / "xvmd").is_dir()


# -- what is at the path already -------------------------------------------------------------------


@pytest.fixture
def stale(path: Path) -> Iterator[Path]:
    """A bound socket nobody listens on: what a killed daemon leaves behind."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        yield path


def test_a_stale_socket_is_reported_as_not_running_then_replaced(stale: Path) -> None:
    with pytest.raises(control.NotRunning, match=f"stale control socket {stale}"):
        control.query(str(stale))

    async def body() -> dict[str, Any]:
        return await query(stale)

    assert serving(stale, lambda: DOC, body) == DOC


def test_no_socket_at_all_is_not_running(path: Path) -> None:
    with pytest.raises(control.NotRunning, match=f"no control socket at {path}"):
        control.query(str(path))


def test_a_live_daemons_socket_is_never_taken_over(path: Path) -> None:
    async def body() -> str:
        with pytest.raises(control.ControlError) as info:
            await control.serve(str(path), lambda: {"second": True})
        assert not isinstance(info.value, control.NotRunning)
        assert (await query(path)) == DOC  # the first daemon still answers
        return str(info.value)

    message = serving(path, lambda: DOC, body)
    assert message == f"another xvmd is running: its control socket {path} answers"


@pytest.mark.parametrize("kind", ["regular file", "directory", "symbolic link"])
def test_what_is_not_a_socket_is_refused_and_kept(tmp_path: Path, path: Path, kind: str) -> None:
    if kind == "regular file":
        path.write_text("keep me\n")
    elif kind == "directory":
        (path / "inside").mkdir(parents=True)
    else:
        (tmp_path / "target").write_text("keep me\n")
        path.symlink_to(tmp_path / "target")
    with pytest.raises(control.ControlError, match="not a socket; not removing it"):
        asyncio.run(control.serve(str(path), lambda: DOC))
    assert path.is_symlink() if kind == "symbolic link" else path.exists()
    if kind == "regular file":
        assert path.read_text() == "keep me\n"
    elif kind == "directory":
        assert (path / "inside").is_dir()


def test_the_client_asked_to_read_a_regular_file_says_not_running(tmp_path: Path) -> None:
    # connect() to a file that is no socket is refused: nothing answers there.
    (tmp_path / "file").write_text("")
    with pytest.raises(control.NotRunning):
        control.query(str(tmp_path / "file"))


# -- peers that misbehave: the client's side -------------------------------------------------------


def answered_by(path: Path, reply: bytes | None, timeout: float = 2.0) -> control.ControlError:
    """What ``query`` raises against a server that sends ``reply`` and hangs up (None: says
    nothing and keeps the connection open)."""
    hold = asyncio.Event()

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if reply is None:
            await hold.wait()
        else:
            w.write(reply)
            await w.drain()
        w.close()

    async def main() -> control.ControlError:
        server = await asyncio.start_unix_server(handle, str(path))
        try:
            await query(path, timeout)
        except control.ControlError as exc:
            return exc
        finally:
            hold.set()
            server.close()
        raise AssertionError("query accepted the answer")

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"\x00\xffnot json\n", "unreadable answer from"),
        (b"", "unreadable answer from"),  # hung up without a word
        (b'{"version": "0.1', "unreadable answer from"),  # cut short
        (b"[1, 2, 3]\n", "unexpected answer from"),
    ],
    ids=["garbage", "hang-up", "truncated", "not-an-object"],
)
def test_a_server_that_answers_badly_is_an_error_not_a_crash(
    path: Path, reply: bytes, message: str
) -> None:
    exc = answered_by(path, reply)
    assert not isinstance(exc, control.NotRunning)
    assert str(exc).startswith(f"{message} {path}")


def test_a_server_that_never_answers_is_given_up_on(path: Path) -> None:
    # The timeout is the behaviour under test: kept short.
    exc = answered_by(path, None, timeout=0.2)
    assert str(exc) == f"xvmd at {path} did not answer in 0.2s"


# -- peers that misbehave: the daemon's side -------------------------------------------------------


def raw_client(path: Path, send: bytes = b"", read: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(path))
        if send:
            s.sendall(send)
        if not read:
            return b""
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_garbage_and_hang_ups_from_clients_change_nothing(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> tuple[bytes, dict[str, Any]]:
        await asyncio.to_thread(raw_client, path, read=False)  # hangs up at once
        got = await asyncio.to_thread(raw_client, path, b"\xff" * 10_000)  # sends garbage
        return got, await query(path)

    got, doc = serving(path, lambda: DOC, body)
    assert json.loads(got) == DOC  # the request bytes are ignored: read-only by design
    assert doc == DOC
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_concurrent_queries_each_get_the_whole_document(path: Path) -> None:
    big = {**DOC, "recent": [{"n": n, "detail": "x" * 200} for n in range(2000)]}

    async def body() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(query(path) for _ in range(16))))

    docs = serving(path, lambda: big, body)
    assert len(docs) == 16 and all(d == big for d in docs)


def test_a_client_that_stops_reading_does_not_hold_up_the_others(path: Path) -> None:
    # Far larger than a socket buffer: the answer to the stalled client cannot be written out.
    huge = {"blob": "x" * (8 << 20)}
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    async def body() -> dict[str, Any]:
        stalled.connect(str(path))
        return await query(path, timeout=5.0)

    try:
        assert serving(path, lambda: huge, body) == huge
    finally:
        stalled.close()


def test_a_status_that_fails_ends_the_connection_and_the_next_one_is_served(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def flaky() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("status broke")
        return DOC

    async def body() -> tuple[str, dict[str, Any]]:
        with pytest.raises(control.ControlError) as info:
            await query(path)
        return str(info.value), await query(path)

    message, doc = serving(path, flaky, body)
    assert message.startswith(f"unreadable answer from {path}")  # no hang, no half document
    assert doc == DOC
    assert "status broke" in caplog.text  # asyncio logs what the handler raised


def test_a_command_line_gets_the_commands_answer_and_knows_who_asks(path: Path) -> None:
    asked: list[tuple[dict[str, Any], control.Peer]] = []

    async def commands(request: dict[str, Any], peer: control.Peer) -> dict[str, Any]:
        asked.append((request, peer))
        return {"ok": True, "echo": request["host"]}

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        server = await control.serve(str(path), lambda: DOC, commands)
        try:
            request = {"command": "confirm-host-down", "host": "hv2"}
            answer = await asyncio.to_thread(control.query, str(path), 2.0, request)
            unknown = {"command": "reboot-everything"}
            other = await asyncio.to_thread(control.query, str(path), 2.0, unknown)
            return answer, other, await query(path)
        finally:
            server.close()
            await server.wait_closed()

    answer, other, status = asyncio.run(main())
    assert answer == {"ok": True, "echo": "hv2"}
    assert other == status == DOC  # anything but a known command: the status, read-only
    assert len(asked) == 1 and asked[0][1].uid == os.getuid() and asked[0][1].pid == os.getpid()
