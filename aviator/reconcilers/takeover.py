"""Where a takeover stands, and the record that keeps it in the policy's status (pure).

A takeover keeps the target's original selector in two places: the Service's
annotation `aviator.example.com/original-selector` and the policy's
`status.takeover` record. The record is written BEFORE the Service is patched, so
a crash at any step leaves the selector somewhere, and a corrupted or stripped
annotation does not lose it.

The record's phase:

- `Pending`: written, the Service patch not yet confirmed (a crash or a failed write
  in between: the next reconcile takes over again);
- `TakenOver`: the Service's selector is ours (confirmed by the status written after
  the patch succeeded, or by the Service seen without its selector);
- `Restored`: the Service got a selector back while it was ours, by any means (a
  patch, `kubectl apply` or `replace`, server-side apply, a GitOps tool's self-heal,
  which may also drop our annotations). It is NOT taken over again while the policy's
  generation and its `aviator.example.com/retake` annotation are those the record
  holds: whoever restored it is not fought. Changing the policy's spec or that
  annotation starts a new round, which may take it over again.

`endpointsGone`: deleting the Service's Endpoints object (the takeover must, see
`routing`) is repeated until a delete finds it gone, so an Endpoints object the
built-in controller re-created from a stale cache is deleted too.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from aviator.kube import marks
from aviator.kube.objects import JSON, annotations_of
from aviator.kube.services import original_selector

PENDING = "Pending"
TAKEN_OVER = "TakenOver"
RESTORED = "Restored"
PHASES = (PENDING, TAKEN_OVER, RESTORED)


@dataclass(frozen=True)
class Record:
    """status.takeover: the Service, its original selector and the round it belongs to."""

    service: str
    selector: dict[str, str]
    phase: str
    generation: int
    retake: str = ""
    endpoints_gone: bool = False

    def to_json(self) -> JSON:
        """The status field (`aviator.api.types.TakeoverStatus`) as JSON."""
        out: JSON = {
            "service": self.service,
            "originalSelector": dict(self.selector),
            "phase": self.phase,
            "generation": self.generation,
        }
        if self.retake:
            out["retake"] = self.retake
        out["endpointsGone"] = self.endpoints_gone
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Record | None:
        """The record in a status, None when absent or unreadable."""
        if not isinstance(raw, Mapping):
            return None
        service, selector, phase = raw.get("service"), raw.get("originalSelector"), raw.get("phase")
        generation = raw.get("generation")
        if not isinstance(service, str) or not service or phase not in PHASES:
            return None
        if not isinstance(selector, Mapping) or not selector:
            return None
        if isinstance(generation, bool) or not isinstance(generation, int):
            return None
        return cls(
            service=service,
            selector={str(k): str(v) for k, v in selector.items()},
            phase=str(phase),
            generation=generation,
            retake=str(raw.get("retake") or ""),
            endpoints_gone=raw.get("endpointsGone") is True,
        )

    def same_round(self, generation: int, retake: str) -> bool:
        return self.generation == generation and self.retake == retake


def record_of(status: JSON | None) -> Record | None:
    return Record.from_json((status or {}).get("takeover"))


def round_of(policy: JSON) -> tuple[int, str]:
    """(generation, retake annotation): a takeover round of the policy."""
    meta = policy.get("metadata") or {}
    generation = meta.get("generation")
    retake = annotations_of(policy).get(marks.ANNOTATION_RETAKE, "")
    return (generation if isinstance(generation, int) else 0), str(retake)


class Standing(enum.Enum):
    """Where the target Service stands for this policy's takeover."""

    TAKE = "take"  # has its selector and may be taken over (now, after our slices)
    TAKEN = "taken"  # ours: no selector, we publish its slices
    RESTORED = "restored"  # its selector is back while ours: reported, not fought
    OTHER_POLICY = "other"  # another policy's annotation is on it
    NO_SELECTOR = "no-selector"  # never had a selector that we know of


@dataclass(frozen=True)
class Takeover:
    standing: Standing
    selector: dict[str, str]  # the original selector ({} when unknown)
    record: Record | None  # what status.takeover says after this reconcile


def _saved(service: JSON, policy: str, record: Record | None) -> dict[str, str]:
    """The original selector: the annotation when ours and readable, else the record."""
    ann = annotations_of(service)
    if ann.get(marks.ANNOTATION_TAKEN_OVER_BY) == policy:
        saved = original_selector(service)
        if saved:
            return saved
    name = str(service.get("metadata", {}).get("name", ""))
    return dict(record.selector) if record is not None and record.service == name else {}


def standing(
    service: JSON,
    policy: str,
    record: Record | None,
    round_: tuple[int, str],
    *,
    endpoints_gone: bool = False,
) -> Takeover:
    """Where `service` stands and the record to keep (see the module docstring).

    `record` is the policy's record (any Service); `endpoints_gone`: a delete of the
    Service's Endpoints found it gone in the previous reconcile."""
    name = str(service.get("metadata", {}).get("name", ""))
    ours = record if record is not None and record.service == name else None
    owner = annotations_of(service).get(marks.ANNOTATION_TAKEN_OVER_BY)
    selector = dict(service.get("spec", {}).get("selector") or {})
    saved = _saved(service, policy, ours)
    generation, retake = round_
    if owner is not None and owner != policy:
        return Takeover(Standing.OTHER_POLICY, saved, ours)
    if not selector:
        if owner == policy or ours is not None:
            if not saved:
                return Takeover(Standing.NO_SELECTOR, {}, ours)
            base = ours or Record(name, saved, TAKEN_OVER, generation, retake)
            kept = replace(
                base,
                selector=saved,
                phase=TAKEN_OVER,
                endpoints_gone=base.endpoints_gone or endpoints_gone,
            )
            return Takeover(Standing.TAKEN, saved, kept)
        return Takeover(Standing.NO_SELECTOR, {}, ours)
    if ours is not None and ours.phase != PENDING and ours.same_round(generation, retake):
        return Takeover(Standing.RESTORED, dict(ours.selector), replace(ours, phase=RESTORED))
    if ours is None and owner == policy:
        # Taken over before records existed, and restored since: the annotation says so.
        restored = Record(name, saved or selector, RESTORED, generation, retake)
        return Takeover(Standing.RESTORED, restored.selector, restored)
    # Not ours yet, a Pending takeover to finish, or a new round: take it over.
    return Takeover(Standing.TAKE, selector, Record(name, selector, PENDING, generation, retake))
