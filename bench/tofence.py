"""Time to fence: ``fence_xvm -o off`` and ``-o reboot`` on a real QEMU/TCG domain.

Runs inside the head-of-line lab (``bench/hol.py``: a private libvirtd, domains A and B, both
daemons in their own namespaces). For each daemon in turn the stock ``fence_xvm`` powers A off
(then A is started again for the next trial), or reboots it. Measured from spawning
``fence_xvm``:

- *answer*: ``fence_xvm`` exited with the daemon's result;
- *QEMU gone*: A's QEMU process ended (a pidfd on it becomes readable at its exit);
- *QEMU back* (reboot): a new QEMU process for A exists.

An answer of success that comes before A's QEMU is gone would be a lie; the trial records it.
"""

from __future__ import annotations

import os
import select
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .stats import Goal

ROUNDS = 3
RUN_T = 60
"""fence_xvm -t: generous, a TCG guest on a busy machine may take seconds to start."""
SETTLE = 1.0
"""Seconds of quiet before each trial."""
BACK_POLL = 0.002
"""Seconds between two looks for A's new QEMU during a reboot."""


class LabLike(Protocol):
    key: Path
    a: str

    @property
    def lv(self) -> Any: ...


class DaemonLike(Protocol):
    name: str

    def fence_xvm(self, key: Path, *args: str, timeout: float) -> Any: ...


def qemu_pids(name: str, skip: set[int] | None = None) -> list[int]:
    """PIDs of QEMU processes running domain ``name`` (``-name guest=NAME,...``), except
    those in ``skip``. (A process read between libvirtd's fork and its exec still shows
    libvirtd's command line, so a PID is looked at again until it is QEMU.)"""
    needle = f"guest={name},".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (skip is not None and int(entry) in skip):
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


class ExitWatch:
    """The monotonic time at which process ``pid`` ended, seen through a pidfd."""

    def __init__(self, pid: int) -> None:
        self.at: float | None = None
        self._fd = os.pidfd_open(pid)
        self._thread = threading.Thread(target=self._wait, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        select.select([self._fd], [], [], RUN_T + 30)
        self.at = time.monotonic()

    def result(self, timeout: float) -> float | None:
        self._thread.join(timeout)
        os.close(self._fd)
        return self.at


class NewProcessWatch:
    """The monotonic time at which a new QEMU for domain ``name`` first shows in /proc."""

    def __init__(self, name: str, old: int) -> None:
        self.at: float | None = None
        self._stop = threading.Event()
        self._seen = {int(p) for p in os.listdir("/proc") if p.isdigit()} | {old}
        self._thread = threading.Thread(target=self._watch, args=(name,), daemon=True)
        self._thread.start()

    def _watch(self, name: str) -> None:
        while not self._stop.is_set():
            if qemu_pids(name, self._seen):
                self.at = time.monotonic()
                return
            time.sleep(BACK_POLL)

    def result(self, timeout: float) -> float | None:
        self._thread.join(timeout)
        self._stop.set()
        return self.at


@dataclass
class FenceTrial:
    daemon: str
    op: str
    rc: int
    answer_s: float
    qemu_gone_s: float | None
    qemu_back_s: float | None
    state_at_answer: str
    domid_before_after: tuple[str, str]

    @property
    def honest(self) -> bool:
        """Success was answered only once A's QEMU had ended."""
        return self.rc != 0 or (self.qemu_gone_s is not None and self.qemu_gone_s <= self.answer_s)

    @property
    def done(self) -> bool:
        if self.rc != 0:
            return False
        if self.op == "off":
            return self.state_at_answer == "shut off"
        before, after = self.domid_before_after
        return self.qemu_back_s is not None and after not in ("", "-", before)


def _since(t0: float, at: float | None) -> float | None:
    return None if at is None else round(at - t0, 4)


def fence_trial(lab: LabLike, d: DaemonLike, op: str) -> FenceTrial:
    lv = lab.lv
    if lv.domstate(lab.a) != "running":
        lv.virsh("start", lab.a, timeout=120)
    time.sleep(SETTLE)
    (pid,) = qemu_pids(lab.a)
    before = lv.domid(lab.a)
    gone = ExitWatch(pid)
    back = NewProcessWatch(lab.a, pid) if op == "reboot" else None
    t0 = time.monotonic()
    done = d.fence_xvm(lab.key, "-o", op, "-H", lab.a, "-t", str(RUN_T), timeout=RUN_T + 30)
    t1 = time.monotonic()
    state = lv.domstate(lab.a)
    return FenceTrial(
        daemon=d.name,
        op=op,
        rc=done.returncode,
        answer_s=round(t1 - t0, 4),
        qemu_gone_s=_since(t0, gone.result(5.0)),
        qemu_back_s=_since(t0, back.result(5.0)) if back is not None else None,
        state_at_answer=state,
        domid_before_after=(before, lv.domid(lab.a)),
    )


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summary(trials: Sequence[FenceTrial]) -> dict[str, Any]:
    return {
        "trials": len(trials),
        "rc": [t.rc for t in trials],
        "answer_s": [t.answer_s for t in trials],
        "answer_median_s": _median([t.answer_s for t in trials]),
        "qemu_gone_median_s": _median([t.qemu_gone_s for t in trials]),
        "qemu_back_median_s": _median([t.qemu_back_s for t in trials]),
        "all_honest": all(t.honest for t in trials),
        "all_done": all(t.done for t in trials),
    }


def run_trials(
    lab: LabLike,
    daemons: Mapping[str, DaemonLike],
    rounds: int = ROUNDS,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Off and reboot, ``rounds`` each per daemon, the daemons alternating."""
    trials: list[FenceTrial] = []
    for r in range(rounds):
        names = ("xvmd", "fence_virtd") if r % 2 == 0 else ("fence_virtd", "xvmd")
        for op in ("off", "reboot"):
            for name in names:
                t = fence_trial(lab, daemons[name], op)
                trials.append(t)
                say(
                    f"fence {op} via {name}: rc {t.rc}, answer {t.answer_s:.3f} s, QEMU gone "
                    f"{t.qemu_gone_s} s, back {t.qemu_back_s} s, state {t.state_at_answer!r}"
                )
    out: dict[str, Any] = {"rounds": rounds, "trials": [asdict(t) for t in trials]}
    for op in ("off", "reboot"):
        per = {n: summary([t for t in trials if t.daemon == n and t.op == op]) for n in daemons}
        x, f = per["xvmd"]["answer_median_s"], per["fence_virtd"]["answer_median_s"]
        out[op] = {**per, "ratio_answer_median": round(x / f, 3) if x and f else None}
    return out


def goals(fencing: Mapping[str, Any]) -> list[dict[str, object]]:
    """Time to fence in the bench report's goal form: faster than fence_virtd, and honest."""
    out: list[dict[str, object]] = []
    for op in ("off", "reboot"):
        res = fencing.get(op) or {}
        ratio = res.get("ratio_answer_median")
        x = res.get("xvmd") or {}
        out += [
            Goal("fence", f"fence_xvm -o {op} on QEMU, answer: median xvmd/fence_virtd",
                 str(ratio), "<= 1.0", ratio is not None and ratio <= 1.0).asdict(),
            Goal("fence", f"xvmd -o {op}: success only after the QEMU process was gone, "
                 "and done (off / running again)", str(bool(x.get("all_honest") and
                 x.get("all_done"))), "true", bool(x.get("all_honest") and x.get("all_done")),
                 f"rc {x.get('rc')}").asdict(),
        ]  # fmt: skip
    return out
