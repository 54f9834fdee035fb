"""Whether a freshly loaded configuration replaces the running one (pure).

Rules, as RHCS applied them to cluster.conf:
1. A configuration with errors never replaces the running one.
2. A changed cluster.conf is taken only if its config_version is greater than the running one;
   an edit without a version bump is reported and ignored.
3. The same cluster.conf with changed key files is a key rotation and is taken at once (key
   files carry no version of their own).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .issues import Issue, Severity
from .load import LoadResult, Snapshot


class Verdict(enum.Enum):
    EDIT = "edit"  # cluster.conf changed with a greater config_version: applied
    KEYS = "keys"  # only key files changed: a rotation, applied
    UNCHANGED = "unchanged"  # nothing to do
    NOT_BUMPED = "not-bumped"  # cluster.conf changed, config_version not greater: ignored
    REJECTED = "rejected"  # errors: the running configuration stays

    @property
    def applies(self) -> bool:
        return self in (Verdict.EDIT, Verdict.KEYS)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    snapshot: Snapshot | None  # the new snapshot to apply (EDIT, KEYS), else None
    summary: str
    problems: tuple[Issue, ...] = ()


def _keys(snap: Snapshot) -> tuple[tuple[str, bytes], ...]:
    return tuple((d.name, d.key) for d in snap.plan.devices)


def decide(current: Snapshot, result: LoadResult) -> Decision:
    new = result.snapshot
    if new is None:
        errors = tuple(i for i in result.issues if i.severity is Severity.ERROR)
        return Decision(
            Verdict.REJECTED,
            None,
            f"new configuration rejected ({len(errors)} error{'s' * (len(errors) != 1)}); "
            f"still serving config_version "
            f"{current.version}",
            errors,
        )
    if new.digest == current.digest:
        if _keys(new) == _keys(current) and new.plan == current.plan:
            return Decision(Verdict.UNCHANGED, None, "configuration unchanged")
        return Decision(Verdict.KEYS, new, f"key files changed; now serving {_describe(new)}")
    if new.version <= current.version:
        return Decision(
            Verdict.NOT_BUMPED,
            None,
            f"cluster.conf changed but config_version {new.version} is not greater than the "
            f"running {current.version}: change ignored (bump config_version to apply it)",
        )
    return Decision(
        Verdict.EDIT,
        new,
        f"config_version {current.version} -> {new.version}: now serving {_describe(new)}",
    )


def _describe(snap: Snapshot) -> str:
    devices = ", ".join(f"{d.name} ({len(d.nodes)} nodes)" for d in snap.plan.devices)
    return devices or "no device"
