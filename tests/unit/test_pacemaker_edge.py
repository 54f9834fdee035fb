"""xvmd's edge to Pacemaker (xvmd/daemon/pacemaker.py) against a fake ``stonith_admin``: a
small shell script in tmp_path that records its arguments and plays one behaviour (the real
outputs come from fixtures/pacemaker/)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tests.support.harness import FIXTURES
from tests.unit.fakes import until
from xvmd.daemon.pacemaker import PacemakerUnavailable, available, fencing_history
from xvmd.hosts.fencehistory import MAX_HISTORY_BYTES, parse_history

PACEMAKER = FIXTURES / "pacemaker"
CONFIRMED = PACEMAKER / "history-confirmed.xml"


def fake(tmp_path: Path, body: str) -> str:
    """A fake stonith_admin running ``body`` after writing its arguments and PID to files."""
    script = tmp_path / "stonith_admin"
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/args\necho $$ > {tmp_path}/pid\n{body}\n"
    )
    script.chmod(0o755)
    return str(script)


def args(tmp_path: Path) -> list[str]:
    return (tmp_path / "args").read_text().splitlines()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def history(program: str, host: str = "node3", timeout: float = 10.0) -> object:
    return asyncio.run(fencing_history(host, program=program, timeout=timeout))


def test_good_output_is_the_history_asked_for_with_verbose_and_xml(tmp_path: Path) -> None:
    program = fake(tmp_path, f"cat {CONFIRMED}")
    assert history(program) == parse_history(CONFIRMED.read_bytes())
    assert args(tmp_path) == ["--history=node3", "--verbose", "--output-as=xml"]


def test_a_name_like_an_option_stays_the_value_of_history(tmp_path: Path) -> None:
    program = fake(tmp_path, f"cat {PACEMAKER / 'history-empty.xml'}")
    assert history(program, host="--cleanup") == []
    assert args(tmp_path)[0] == "--history=--cleanup"


@pytest.mark.parametrize("host", ["", "*", "node\n3", "node\x003"])
def test_not_a_node_name(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="not a node name"):
        history(fake(tmp_path, "exit 0"), host=host)
    assert not (tmp_path / "args").exists()


def test_missing_program(tmp_path: Path) -> None:
    with pytest.raises(PacemakerUnavailable, match=r"not found .*pacemaker-cli-utils"):
        history(str(tmp_path / "stonith_admin"))


def test_program_that_cannot_run(tmp_path: Path) -> None:
    program = fake(tmp_path, "exit 0")
    Path(program).chmod(stat.S_IRUSR)
    with pytest.raises(PacemakerUnavailable, match=r"cannot run .*ermission denied"):
        history(program)


def test_timeout_kills_it(tmp_path: Path) -> None:
    program = fake(tmp_path, "exec sleep 30")
    with pytest.raises(PacemakerUnavailable, match=r"no answer within 0\.2 s \(killed\)"):
        history(program, timeout=0.2)
    assert gone(int((tmp_path / "pid").read_text()))


def test_non_zero_exit_carries_pacemakers_message_and_stderr(tmp_path: Path) -> None:
    no_fencer = PACEMAKER / "no-fencer.xml"
    program = fake(tmp_path, f"cat {no_fencer}; echo 'crm_ipc_connect failed' >&2; exit 102")
    with pytest.raises(PacemakerUnavailable) as caught:
        history(program)
    assert str(caught.value) == (
        f"{program} exited with status 102: Pacemaker reported error 102: Not connected; "
        "Could not connect to fencer: Transport endpoint is not connected; "
        "crm_ipc_connect failed"
    )


def test_non_zero_exit_without_a_word(tmp_path: Path) -> None:
    with pytest.raises(PacemakerUnavailable, match="exited with status 3: no message"):
        history(fake(tmp_path, "exit 3"))


def test_killed_by_a_signal(tmp_path: Path) -> None:
    with pytest.raises(PacemakerUnavailable, match="was killed by signal 9: no message"):
        history(fake(tmp_path, "kill -9 $$"))


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("echo 'Fencing History'", "not XML"),
        ("", "not XML"),
        ("echo '<pacemaker-result><status code=\"0\"/></pacemaker-result>'", "expected one <list>"),
    ],
)
def test_output_that_is_no_history(tmp_path: Path, output: str, why: str) -> None:
    with pytest.raises(PacemakerUnavailable, match=f"printed no fencing history: {why}"):
        history(fake(tmp_path, output))


def test_output_past_the_bound_is_refused(tmp_path: Path) -> None:
    program = fake(tmp_path, f"head -c {MAX_HISTORY_BYTES + 1} /dev/zero")
    with pytest.raises(PacemakerUnavailable, match=f"more than {MAX_HISTORY_BYTES} bytes"):
        history(program)


def test_much_stderr_is_no_failure(tmp_path: Path) -> None:
    program = fake(tmp_path, f"head -c 1000000 /dev/zero >&2; cat {CONFIRMED}")
    assert history(program) == parse_history(CONFIRMED.read_bytes())


def test_the_loop_runs_while_stonith_admin_does(tmp_path: Path) -> None:
    """The script waits on a FIFO only the test's own coroutine can open: were the call
    blocking, it would never be opened and the call would time out."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    program = fake(tmp_path, f"read line < {fifo}; cat {CONFIRMED}")

    async def scenario() -> int:
        task = asyncio.create_task(fencing_history("node3", program=program, timeout=5))
        fd: list[int] = []

        def opened() -> bool:
            try:
                fd.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: the script has not opened it yet
                return False
            return True

        await until(opened, timeout=5)
        os.write(fd[0], b"go\n")
        os.close(fd[0])
        return len(await task)

    assert asyncio.run(scenario()) == 3


def test_cancelling_the_caller_kills_it(tmp_path: Path) -> None:
    program = fake(tmp_path, "exec sleep 30")
    pid_file = tmp_path / "pid"

    async def scenario() -> int:
        task = asyncio.create_task(fencing_history("node3", program=program, timeout=30))
        await until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(pid_file.read_text())

    assert gone(asyncio.run(scenario()))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f"cat {PACEMAKER / 'history-empty.xml'}", True),
        (f"cat {PACEMAKER / 'no-fencer.xml'}; exit 102", False),
        ("echo garbage", False),
        ("exec sleep 30", False),
    ],
)
def test_available(tmp_path: Path, body: str, expected: bool) -> None:
    program = fake(tmp_path, body)
    assert asyncio.run(available(program=program, timeout=0.5)) is expected
    assert args(tmp_path) == ["--history=*", "--output-as=xml"]


def test_not_available_when_missing(tmp_path: Path) -> None:
    assert asyncio.run(available(program=str(tmp_path / "stonith_admin"))) is False
