"""The edge to the host cluster's Pacemaker: its fencing history, read with ``stonith_admin``.

Rules:
1. Never blocks the event loop: ``stonith_admin`` runs as an asyncio subprocess (stdin
   /dev/null), both pipes are read concurrently and bounded, and a run that outlives its
   timeout is killed and reaped. A cancelled caller kills it too.
2. Every way of not getting a history raises ``PacemakerUnavailable`` saying why: the program
   is missing or cannot run, it timed out, it exited non-zero (with Pacemaker's own message
   and stderr), or it printed something that is not a history. Judging the history is
   ``xvmd.hosts.fencehistory``'s job (pure).
3. The command is ``stonith_admin --history=HOST --verbose --output-as=xml``:
   - ``--verbose``: without it stonith_admin prints one successful event only (in 2.1.5 the
     oldest: it keeps the last success of a newest-first list), hiding newer ones.
   - no ``--broadcast``: with it the local fencer starts a history sync with its peers and
     answers an empty list. It is not needed: every fencer broadcasts each result to all
     peers when the operation completes (a ``--confirm`` on one node was seen on another
     within 20 ms), and fencers merge their histories when the membership changes.
   - ``--history=HOST`` in one argument, so a name starting with "-" is never an option.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess

from xvmd.hosts.fencehistory import (
    MAX_HISTORY_BYTES,
    FencingEvent,
    HistoryError,
    parse_history,
    reported_error,
)

STONITH_ADMIN = "stonith_admin"
MAX_STDERR_BYTES = 16 * 1024  # kept for the message; the rest is read and dropped


class PacemakerUnavailable(Exception):
    """No fencing history could be had from Pacemaker; the message says why."""


async def fencing_history(
    host: str, *, timeout: float = 10.0, program: str = STONITH_ADMIN
) -> list[FencingEvent]:
    """Every event of the local fencer's history for ``host`` (all of the cluster's, rule 3).

    Raises:
        ValueError: ``host`` is empty, "*" (every node) or has control characters.
        PacemakerUnavailable: see rule 2.
    """
    if not host or host == "*" or not host.isprintable():
        raise ValueError(f"not a node name: {host!r}")
    args = (f"--history={host}", "--verbose", "--output-as=xml")
    rc, out, err = await _run(program, args, timeout)
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise PacemakerUnavailable(f"{program} {how}: {_why(out, err)}")
    try:
        return parse_history(out)
    except HistoryError as e:
        raise PacemakerUnavailable(f"{program} printed no fencing history: {e}") from None


async def available(*, timeout: float = 5.0, program: str = STONITH_ADMIN) -> bool:
    """Whether ``program`` runs and the local fencer answers (its history of "*" is read:
    the one query that needs the fencer and no fence device)."""
    try:
        rc, out, _ = await _run(program, ("--history=*", "--output-as=xml"), timeout)
    except PacemakerUnavailable:
        return False
    if rc != 0:
        return False
    try:
        parse_history(out)
    except HistoryError:
        return False
    return True


def _why(out: bytes, err: bytes) -> str:
    """Pacemaker's message from its XML status, then stderr: whatever there is."""
    parts = [reported_error(out) or ""]
    parts.append(err.decode(errors="replace").strip()[:2000])
    return "; ".join(p for p in parts if p) or "no message"


async def _run(program: str, args: tuple[str, ...], timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``program`` (rule 1): (exit status, stdout, the start of stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise PacemakerUnavailable(
            f"{program} not found (is pacemaker-cli-utils installed?)"
        ) from None
    except OSError as e:
        raise PacemakerUnavailable(f"cannot run {program}: {e.strerror or e}") from None
    errors = asyncio.create_task(_read(proc.stderr, MAX_STDERR_BYTES, None))
    try:
        async with asyncio.timeout(timeout):
            out = await _read(proc.stdout, MAX_HISTORY_BYTES, program)
            rc = await proc.wait()
            err = await errors
    except TimeoutError:
        raise PacemakerUnavailable(
            f"{program} gave no answer within {timeout:g} s (killed)"
        ) from None
    finally:
        errors.cancel()  # done by now, unless we leave early: then the pipe is of no use
        await _reap(proc)
    return rc, out, err


async def _read(stream: asyncio.StreamReader | None, limit: int, program: str | None) -> bytes:
    """Read ``stream`` to its end. Past ``limit``: refuse (``program`` given) or drop."""
    if stream is None:
        return b""
    data = bytearray()
    while chunk := await stream.read(65536):
        if len(data) + len(chunk) > limit:
            if program is not None:
                raise PacemakerUnavailable(f"{program} printed more than {limit} bytes")
            chunk = chunk[: max(0, limit - len(data))]
        data += chunk
    return bytes(data)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` if it still runs and wait for it, so no zombie or orphan is left."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
