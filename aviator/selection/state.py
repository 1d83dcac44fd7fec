"""The engine's memory between evaluations, and its JSON form.

The reconciler stores `EngineState.to_dict()` in the policy status so that a new
leader continues where the old one stopped. It is kept small (pods with a default
breaker record are not stored) and it does not change in a steady state, so storing
it costs no API writes.

Breaker records and the pending dampening set are filed under each pod's identity
(`PodInput.key`: its uid), not its name, so a pod recreated under the same name does
not inherit its predecessor's ejection. Version 1 states filed them under names;
they are read as such (`by_name`) and written back as version 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

STATE_VERSION = 2


class BreakerStatus(StrEnum):
    CLOSED = "closed"
    OPEN = "open"  # ejected
    HALF_OPEN = "halfOpen"


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """One pod's circuit breaker.

    `violations`: consecutive fresh evaluations with p99 above the threshold (closed).
    `since`: when the breaker last changed status (None: never ejected).
    `level`: ejections in the current streak; the recovery wait is
    recoveryInterval x min(2**level', 10) with level' = level - 1.
    `cause`: while open or halfOpen, the rule that ejected the pod (a selection
    `Reason` value, e.g. "ErrorRateAboveThreshold"; "" read from an older state: p99).
    """

    status: BreakerStatus = BreakerStatus.CLOSED
    violations: int = 0
    since: float | None = None
    level: int = 0
    cause: str = ""

    @property
    def is_default(self) -> bool:
        return self == _DEFAULT_RECORD

    @property
    def out_of_traffic(self) -> bool:
        return self.status is not BreakerStatus.CLOSED

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value}
        if self.violations:
            out["violations"] = self.violations
        if self.since is not None:
            out["since"] = self.since
        if self.level:
            out["level"] = self.level
        if self.cause:
            out["cause"] = self.cause
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BreakerRecord:
        since = data.get("since")
        status = BreakerStatus(data.get("status", BreakerStatus.CLOSED.value))
        if status is not BreakerStatus.CLOSED and since is None:
            raise ValueError("an open or halfOpen breaker record needs 'since'")
        return cls(
            status=status,
            violations=_non_negative_int(data.get("violations", 0), "violations"),
            since=None if since is None else _finite_float(since, "since"),
            level=_non_negative_int(data.get("level", 0), "level"),
            cause=_text(data.get("cause", ""), "cause"),
        )


_DEFAULT_RECORD = BreakerRecord()


@dataclass(frozen=True, slots=True)
class DampeningState:
    """The set that is waiting to be applied and how many evaluations it has won."""

    candidate: frozenset[str] | None = None
    streak: int = 0

    def to_dict(self) -> dict[str, Any]:
        if self.candidate is None:
            return {}
        return {"candidate": sorted(self.candidate), "streak": self.streak}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DampeningState:
        candidate = data.get("candidate")
        if candidate is None:
            return cls()
        if not isinstance(candidate, list) or not all(isinstance(n, str) for n in candidate):
            raise ValueError("dampening.candidate must be a list of pod keys")
        return cls(frozenset(candidate), _non_negative_int(data.get("streak", 0), "streak"))


@dataclass(frozen=True, slots=True)
class EngineState:
    """Everything the engine remembers. The default value is the state before any evaluation."""

    evaluated: bool = False
    overload: bool = False
    breaker: Mapping[str, BreakerRecord] = field(default_factory=dict)  # by pod key
    dampening: DampeningState = field(default_factory=DampeningState)  # pod keys
    by_name: bool = False  # read from a version 1 state: the keys are pod names

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form. Readers ignore unknown keys, so fields can be added later."""
        out: dict[str, Any] = {"version": STATE_VERSION, "evaluated": self.evaluated}
        if self.overload:
            out["overload"] = True
        if self.breaker:
            out["breaker"] = {name: self.breaker[name].to_dict() for name in sorted(self.breaker)}
        damp = self.dampening.to_dict()
        if damp:
            out["dampening"] = damp
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineState:
        """Parse `to_dict()` output; raises ValueError on malformed input.

        A caller that cannot parse a stored state should start from `EngineState()`:
        the engine then behaves as on a first evaluation (fail safe, no ejections).
        """
        if not isinstance(data, Mapping):
            raise ValueError("engine state must be an object")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"unsupported engine state version {version!r}")
        breaker = data.get("breaker", {})
        if not isinstance(breaker, Mapping):
            raise ValueError("breaker must be an object")
        records: dict[str, BreakerRecord] = {}
        for name, record in breaker.items():
            if not isinstance(name, str) or not isinstance(record, Mapping):
                raise ValueError("breaker entries must map pod keys to objects")
            records[name] = BreakerRecord.from_dict(record)
        damp = data.get("dampening", {})
        if not isinstance(damp, Mapping):
            raise ValueError("dampening must be an object")
        return cls(
            evaluated=bool(data.get("evaluated", False)),
            overload=bool(data.get("overload", False)),
            breaker={n: r for n, r in records.items() if not r.is_default},
            dampening=DampeningState.from_dict(damp),
            by_name=version == 1,
        )


def _non_negative_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"{what} must be a short string")
    return value


def _finite_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    return float(value)
