"""Who is a shard member right now, from the member Leases a replica has seen (pure).

Each replica holds a Lease of its own, `member_lease_name(identity)`, labelled
`marks.LABEL_SHARD_MEMBER`, renewed by a `LeaderElector` (aviator.leaderelection) like
the leader Lease. A member is alive, in one observer's view, while its Lease names a
holder and has not expired; expiry is judged as the elector judges it: leaseDuration
after the observer last saw the record change, on the observer's monotonic clock (never
by comparing the holder's wall-clock renewTime with our own). A released Lease (empty
holder: the member stopped gracefully, after its work) is dead at once. A Lease that
disappears (deleted by someone) stays alive for a leaseDuration from when we learn it:
its holder may not know yet, and may create it again.

The view comes from an informer, which may lag without knowing it; so before a policy
is taken from a member that looks expired, the claimant reads that member's Lease
from the API server (`ShardManager`) and observes it here: a renewal the watch missed
makes the member alive again.

Member Leases of replicas gone for good (a rollout leaves one per old pod) are deleted
by the members still alive once dead for `GC_AFTER_LEASES` lease durations (and at
least `GC_MIN_S`), with a resourceVersion precondition; a replica that was only cut off
creates its Lease again when it can renew.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from aviator.informers.keys import JSON
from aviator.leaderelection.record import LeaderElectionRecord, record_from_lease_spec

PREFIX = "aviator-shard-"
GC_AFTER_LEASES = 20
GC_MIN_S = 300.0
_MAX_NAME = 253
_INVALID = re.compile(r"[^a-z0-9.-]+")


def member_lease_name(identity: str) -> str:
    """The Lease name of the member `identity`: a DNS subdomain, stable, distinct."""
    cleaned = _INVALID.sub("-", identity.lower()).strip(".-") or "member"
    name = PREFIX + cleaned
    if cleaned != identity or len(name) > _MAX_NAME:
        # Two identities that clean to the same text must not share a Lease.
        tag = hashlib.blake2b(identity.encode(), digest_size=4).hexdigest()
        name = f"{name[: _MAX_NAME - 9].rstrip('.-')}-{tag}"
    return name


@dataclass(frozen=True)
class _Seen:
    record: LeaderElectionRecord
    changed_at: float  # our clock when this record was first seen
    deleted: bool = False

    def expires_at(self) -> float:
        return self.changed_at + self.record.lease_duration_s

    def alive(self, now: float) -> bool:
        return bool(self.record.holder_identity) and now < self.expires_at()


class MemberTable:
    """Member Leases by name, as one replica observed them."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def observe(self, lease: JSON, now: float) -> bool:
        """A Lease added or updated; True if its record changed (membership may have)."""
        name = str((lease.get("metadata") or {}).get("name") or "")
        record = record_from_lease_spec(lease.get("spec"))
        seen = self._seen.get(name)
        if seen is not None and seen.record == record and not seen.deleted:
            return False
        self._seen[name] = _Seen(record, now)
        return True

    def deleted(self, lease: JSON, now: float) -> None:
        """A Lease deleted: its holder counts as alive for a leaseDuration from now."""
        self.gone(str((lease.get("metadata") or {}).get("name") or ""), now)

    def gone(self, name: str, now: float) -> bool:
        """The Lease `name` is not there (a delete seen, or a read found none): its
        holder may not know yet and may create it again, so it counts as alive for a
        leaseDuration from the first time we learn it is gone. True if that is news."""
        seen = self._seen.get(name)
        if seen is None or seen.deleted:
            return False
        self._seen[name] = _Seen(seen.record, now, deleted=True)
        return True

    def alive(self, now: float) -> frozenset[str]:
        """The identities of the members alive at `now` (forgets long-dead deleted ones)."""
        for name in [n for n, s in self._seen.items() if s.deleted and not s.alive(now)]:
            del self._seen[name]
        return frozenset(s.record.holder_identity for s in self._seen.values() if s.alive(now))

    def dead_for(self, name: str, now: float) -> float | None:
        """Seconds since the member Lease `name` expired or was released; None while it
        is alive or was never seen."""
        seen = self._seen.get(name)
        if seen is None or seen.alive(now):
            return None
        since = seen.expires_at() if seen.record.holder_identity else seen.changed_at
        return max(0.0, now - since)

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the next alive member would expire without a renewal."""
        pending = [s.expires_at() - now for s in self._seen.values() if s.alive(now)]
        return min(pending) if pending else None
