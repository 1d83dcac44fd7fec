"""Events (events.k8s.io/v1) about policies: PodEjected, PodReadmitted, EndpointsUpdated.

Events are advisory: a failure to record one is logged and never fails a reconcile.
The same (object, reason, note) within `dedupe_s` is recorded once, so a retried
reconcile or a bouncing leader does not spam `kubectl describe`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

from aviator.kube.client import ApiError
from aviator.kube.marks import REPORTING_CONTROLLER
from aviator.kube.objects import JSON
from aviator.kube.resources import EVENTS
from aviator.runtime.writer import CacheBehind, Write, Writer

log = logging.getLogger(__name__)


NORMAL = "Normal"
WARNING = "Warning"


def object_reference(obj: JSON) -> JSON:
    meta = obj.get("metadata", {})
    ref: JSON = {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": obj.get("kind", ""),
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
    }
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    return ref


def micro_time(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_event(
    regarding: JSON,
    *,
    reason: str,
    note: str,
    action: str,
    event_type: str,
    instance: str,
    at: float,
    related: JSON | None = None,
) -> JSON:
    meta = regarding.get("metadata", {})
    event: JSON = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name', 'aviator')}.{uuid.uuid4().hex[:16]}",
            "namespace": meta.get("namespace", "default"),
        },
        "eventTime": micro_time(at),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": action,
        "reason": reason,
        "note": note[:1024],
        "type": event_type,
        "regarding": object_reference(regarding),
    }
    if related is not None:
        event["related"] = object_reference(related)
    return event


class EventRecorder:
    """Records Events through the API, deduplicated within a time window."""

    def __init__(
        self,
        writer: Writer,
        instance: str,
        *,
        dedupe_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._instance = instance
        self._dedupe_s = dedupe_s
        self._clock = clock
        # Oldest first (refreshed keys move to the end), so expiry pops from the front:
        # a burst of thousands of policies' events costs O(1) each, not a rebuild each.
        self._recent: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    async def record(
        self,
        regarding: JSON,
        reason: str,
        note: str,
        *,
        action: str = "Evaluate",
        event_type: str = NORMAL,
        related: JSON | None = None,
    ) -> bool:
        """Record one Event; False when deduplicated or when the API refused it."""
        now = self._clock()
        uid = str(regarding.get("metadata", {}).get("uid", ""))
        key = (uid, reason, note)
        last = self._recent.get(key)
        if last is not None and now - last < self._dedupe_s:
            return False
        recent = self._recent
        while recent and now - next(iter(recent.values())) >= self._dedupe_s:
            recent.popitem(last=False)
        recent[key] = now
        recent.move_to_end(key)
        event = build_event(
            regarding,
            reason=reason,
            note=note,
            action=action,
            event_type=event_type,
            instance=self._instance,
            at=now,
            related=related,
        )
        ns = str(event["metadata"]["namespace"])
        try:
            await self._writer.apply(Write("create", EVENTS, ns, event["metadata"]["name"], event))
        except (ApiError, CacheBehind, OSError, TimeoutError) as exc:
            log.warning("event %s for %s not recorded: %s", reason, key[0], exc)
            return False
        return True
