"""Summaries, goals and the run plan shared by the scenarios."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

T = TypeVar("T")

XVMD = "xvmd"
FVD = "fence_virtd"


@dataclass(frozen=True)
class Plan:
    """How much of everything; ``full`` and ``quick`` below."""

    quick: bool
    rounds: int  # A/B rounds per scenario
    latency_runs: int  # fence_xvm runs per daemon and op (after warm-up)
    warmup: int
    load_count: int  # requests per daemon and concurrency level
    concurrency: tuple[int, ...]
    flood_seconds: float
    flood_rate: float
    probe_interval: float
    scale_domains: int
    list_runs: int
    ready_runs: int
    ccs_nodes: int
    ccs_runs: int
    reload_runs: int
    footprint_requests: int
    footprint_warmup: int


FULL = Plan(
    quick=False,
    rounds=4,
    latency_runs=40,
    warmup=3,
    load_count=10_000,
    concurrency=(16, 64),
    flood_seconds=10.0,
    flood_rate=50_000.0,
    probe_interval=0.1,
    scale_domains=2000,
    list_runs=10,
    ready_runs=3,
    ccs_nodes=1000,
    ccs_runs=20,
    reload_runs=3,
    footprint_requests=100_000,
    footprint_warmup=1000,
)
QUICK = Plan(
    quick=True,
    rounds=2,
    latency_runs=10,
    warmup=3,
    load_count=2000,
    concurrency=(16, 64),
    flood_seconds=3.0,
    flood_rate=50_000.0,
    probe_interval=0.1,
    scale_domains=2000,
    list_runs=4,
    ready_runs=2,
    ccs_nodes=1000,
    ccs_runs=5,
    reload_runs=2,
    footprint_requests=10_000,
    footprint_warmup=1000,
)


def alternate(rounds: int, a: T, b: T) -> Iterator[tuple[int, T]]:
    """A/B, B/A, A/B, …: drift over the run affects both sides alike."""
    for r in range(rounds):
        for item in (a, b) if r % 2 == 0 else (b, a):
            yield r, item


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(percentile(values, 50), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(sum(values) / len(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


@dataclass
class Goal:
    scenario: str
    what: str
    value: str
    target: str
    met: bool | None  # None: could not be measured
    note: str = ""

    def asdict(self) -> dict[str, object]:
        return asdict(self)
