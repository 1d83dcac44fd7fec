"""The one path for API writes: a `Write` is data, the `Writer` executes and meters it.

A reconciler decides its writes as values (`Write`) and hands them over; this module
owns what every write has in common, so no reconciler repeats it:

- outcome classes: a conflict (409, the object changed or already exists) means our
  informer cache is behind the server, so the reconcile ends with `CacheBehind` and the
  loop looks again shortly instead of counting an error; a missing object (404) is
  fine where the write says so (`missing_ok`: deletes, restores, status of a deleted
  policy) and otherwise also means the cache is behind; a refusal (403) is tolerated
  only where the write says so (`forbidden_ok`), with a warning; anything else raises
  `ApiError` to the loop's rate limiter;
- metrics: `aviator_api_writes_total{kind, verb}` counts every write the server
  accepted, in this one place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.objects import JSON
from aviator.kube.resources import Resource

Verb = Literal["create", "replace", "patch", "delete"]
log = logging.getLogger(__name__)


class CacheBehind(Exception):
    """A write met a newer server state than the informer cache shows; look again
    soon (the loop requeues the key after a short delay, not as an error)."""


@dataclass(frozen=True)
class Write:
    """One API write. `body` is the object (create, replace) or the merge patch."""

    verb: Verb
    resource: Resource
    namespace: str
    name: str
    body: JSON | None = None
    subresource: str | None = None
    missing_ok: bool = False
    forbidden_ok: bool = False
    note: str | None = None  # logged at info once the server accepted the write

    def describe(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {self.resource.kind} {self.namespace}/{self.name}{sub}"

    @property
    def metric_verb(self) -> str:
        return f"{self.verb}-{self.subresource}" if self.subresource else self.verb


class WriteMetrics:
    """`aviator_api_writes_total{kind, verb}` on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter(
            "aviator_api_writes_total",
            "Writes the API server accepted.",
            ["kind", "verb"],
            registry=registry,
        )

    def accepted(self, write: Write) -> None:
        self.writes.labels(kind=write.resource.kind, verb=write.metric_verb).inc()


class Writer:
    """Executes `Write`s in order against the API server (see the module contract)."""

    def __init__(self, client: KubeClient, metrics: WriteMetrics) -> None:
        self.client = client
        self.metrics = metrics

    async def apply_all(self, writes: Iterable[Write]) -> None:
        for write in writes:
            await self.apply(write)

    async def apply(self, write: Write) -> JSON | None:
        """The server's answer, or None when the object was missing and that is fine."""
        try:
            answer = await self._send(write)
        except ApiError as exc:
            if exc.conflict:
                raise CacheBehind(f"{write.describe()}: {exc}") from exc
            if exc.not_found:
                if write.missing_ok:
                    return None
                raise CacheBehind(f"{write.describe()}: not found") from exc
            if exc.status == 403 and write.forbidden_ok:
                log.warning("%s refused: %s", write.describe(), exc)
                return None
            raise
        self.metrics.accepted(write)
        if write.note:
            log.info("%s: %s", write.describe(), write.note)
        return answer

    async def _send(self, write: Write) -> JSON:
        res, ns, name, body = write.resource, write.namespace, write.name, write.body
        if write.verb == "delete":
            result: Any = await self.client.delete(res, name, ns)
        elif write.verb == "create":
            assert body is not None, write.describe()
            result = await self.client.create(res, body, ns)
        elif write.verb == "replace":
            assert body is not None, write.describe()
            result = await self.client.replace(res, body, ns)
        else:
            assert body is not None, write.describe()
            result = await self.client.patch(res, name, body, ns, subresource=write.subresource)
        return result if isinstance(result, dict) else {}
