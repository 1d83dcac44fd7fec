"""The ownership marker on a policy and what one replica does about it (pure).

The marker is the annotation `marks.ANNOTATION_SHARD` = "<identity>@<term>": the replica
that may write the policy's objects, and the term (one per hold of its member Lease) in
which it claimed it. It changes only by a write with a resourceVersion precondition, so
every change is based on the version the writer decided from.

`decide` is the whole hand-over rule, for replica `me` in term `term`, given the members
alive in its view and the ring's owner in that view:

| marker | ring says me | ring says another |
|---|---|---|
| ours, this term | KEEP (reconcile it) | RELEASE (stop, then clear the marker) |
| ours, an earlier term | CLAIM (that term stopped writing) | CLEAR (nobody writes it) |
| none | CLAIM | IGNORE |
| another, alive | WAIT (it releases when it sees the ring) | IGNORE |
| another, not alive | CLAIM (its lease expired: it stopped) | IGNORE |
"""

from __future__ import annotations

from collections.abc import Set
from enum import Enum

from aviator.informers.keys import JSON
from aviator.kube.marks import ANNOTATION_SHARD


class Action(Enum):
    KEEP = "keep"
    CLAIM = "claim"
    RELEASE = "release"
    CLEAR = "clear"
    WAIT = "wait"
    IGNORE = "ignore"


def marker_value(identity: str, term: str) -> str:
    return f"{identity}@{term}"


def holder(marker: str) -> str:
    """The identity in a marker ("" for none)."""
    return marker.rpartition("@")[0] if "@" in marker else marker


def marker_of(policy: JSON) -> str:
    return str(((policy.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SHARD, ""))


def decide(me: str, term: str, marker: str, alive: Set[str], ring_owner: str | None) -> Action:
    """What replica `me` (in `term`) does with a policy carrying `marker` (table above)."""
    mine = ring_owner == me
    who = holder(marker)
    if marker == marker_value(me, term):
        return Action.KEEP if mine else Action.RELEASE
    if who == me:  # claimed in an earlier term of ours, which has stopped writing
        return Action.CLAIM if mine else Action.CLEAR
    if not mine:
        return Action.IGNORE
    if not marker or who not in alive:
        return Action.CLAIM
    return Action.WAIT


def claim_patch(resource_version: str, marker: str | None) -> JSON:
    """A merge patch setting (or, with None, removing) the marker, only on that version."""
    return {
        "metadata": {"resourceVersion": resource_version, "annotations": {ANNOTATION_SHARD: marker}}
    }
