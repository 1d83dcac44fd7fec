"""The leader election record and its encoding in a coordination.k8s.io/v1 Lease spec."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class LeaderElectionRecord:
    """Who holds the lock, for how long, and since when.

    Times are the holder's wall clock, written for humans and other tools; electors never
    compare them with their own clock (clocks differ between machines). Expiry is judged
    from when a reader last saw the record change, on the reader's monotonic clock.
    """

    holder_identity: str
    lease_duration_s: float
    acquire_time: str = ""
    renew_time: str = ""
    lease_transitions: int = 0

    def held_by(self, identity: str) -> bool:
        return self.holder_identity == identity


def micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, in UTC."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_from_lease_spec(spec: JSON | None) -> LeaderElectionRecord:
    spec = spec or {}
    return LeaderElectionRecord(
        holder_identity=str(spec.get("holderIdentity") or ""),
        lease_duration_s=float(spec.get("leaseDurationSeconds") or 0),
        acquire_time=str(spec.get("acquireTime") or ""),
        renew_time=str(spec.get("renewTime") or ""),
        lease_transitions=int(spec.get("leaseTransitions") or 0),
    )


def lease_spec_from_record(record: LeaderElectionRecord) -> JSON:
    """The Lease spec; leaseDurationSeconds is an integer there, so it is rounded up."""
    spec: JSON = {
        "holderIdentity": record.holder_identity,
        "leaseDurationSeconds": max(1, math.ceil(record.lease_duration_s)),
        "leaseTransitions": record.lease_transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return spec
