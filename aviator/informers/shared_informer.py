"""SharedIndexInformer: one reflector and cache per resource, fanned out to many handlers.

The reflector's changes are applied to the Indexer and turned into notifications in one
synchronous step (asyncio runs one thing at a time), so there is no DeltaFIFO: a handler
reading the cache sees at least the state its notification describes, and every
handler's buffer receives the same sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aviator.informers.handlers import ResourceEventHandler
from aviator.informers.keys import JSON, object_key
from aviator.informers.listener import (
    AddNotification,
    DeleteNotification,
    Notification,
    ProcessorListener,
    UpdateNotification,
)
from aviator.informers.reflector import Reflector
from aviator.informers.store import NAMESPACE_INDEX, Indexer, IndexFunc, namespace_index
from aviator.kube.client import ListWatchClient
from aviator.kube.projection import Projection
from aviator.kube.resources import Resource

log = logging.getLogger(__name__)


class HandlerRegistration:
    """Returned by add_event_handler: per-handler sync state, and the handle to remove it."""

    def __init__(self, informer: SharedIndexInformer, listener: ProcessorListener) -> None:
        self._informer = informer
        self.listener = listener

    def has_synced(self) -> bool:
        """The informer has synced and this handler has handled the initial list."""
        return self._informer.has_synced() and self.listener.initial_list_delivered()

    async def wait_for_sync(self) -> None:
        await self._informer.wait_for_sync()
        await self.listener.wait_initial_list_delivered()


class SharedIndexInformer:
    """A watched, indexed cache of one resource (optionally one namespace / selection).

    Handlers get on_add / on_update / on_delete in order, each from its own buffer and
    task. A handler added after the cache is populated first receives a synthetic add
    (is_initial_list=True) for every cached object. With resync_period, every cached
    object is re-delivered as on_update(obj, obj) that often. Cached objects carry no
    metadata.managedFields unless drop_managed_fields=False, and only the fields of
    `projection` when one is given (see Reflector).
    """

    def __init__(
        self,
        client: ListWatchClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resync_period: float | None = None,
        indexers: Mapping[str, IndexFunc] | None = None,
        drop_managed_fields: bool = True,
        projection: Projection | None = None,
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.indexer = Indexer({NAMESPACE_INDEX: namespace_index, **(indexers or {})})
        self.resync_period = resync_period
        self.reflector = Reflector(
            client,
            resource,
            _InformerStore(self),
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            drop_managed_fields=drop_managed_fields,
            projection=projection,
        )
        self._listeners: list[ProcessorListener] = []
        self._synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # Handlers.

    def add_event_handler(
        self, handler: ResourceEventHandler, name: str = ""
    ) -> HandlerRegistration:
        """Register a handler; if objects are cached already, it first gets them as adds."""
        listener = ProcessorListener(handler, name)
        for obj in self.indexer.list():
            listener.add(AddNotification(obj, True))
        self._listeners.append(listener)
        if self._started:
            listener.start()
        return HandlerRegistration(self, listener)

    async def remove_event_handler(self, registration: HandlerRegistration) -> None:
        if registration.listener in self._listeners:
            self._listeners.remove(registration.listener)
            await registration.listener.stop()

    def _distribute(self, notification: Notification) -> None:
        for listener in self._listeners:
            listener.add(notification)

    # Lifecycle.

    async def start(self) -> None:
        """Start listing/watching and the handler tasks; returns at once (idempotent)."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            listener.start()
        self._tasks.append(
            loop.create_task(self.reflector.run(), name=f"reflector-{self.reflector.describe()}")
        )
        if self.resync_period:
            self._tasks.append(loop.create_task(self._resync_loop(self.resync_period)))

    async def stop(self) -> None:
        """Stop watching and delivering; the cache keeps its last contents."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in self._listeners:
            await listener.stop()
        self._started = False

    def has_synced(self) -> bool:
        """The first list has been stored in the cache."""
        return self._synced.is_set()

    async def wait_for_sync(self) -> None:
        await self._synced.wait()

    async def _resync_loop(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                if self.has_synced():
                    for obj in self.indexer.list():
                        self._distribute(UpdateNotification(obj, obj))
            except Exception:  # one bad resync must not end resyncing for good
                log.exception("informer resync failed")


class _InformerStore:
    """The reflector's view of an informer: apply to the cache, then notify."""

    def __init__(self, informer: SharedIndexInformer) -> None:
        self._informer = informer

    def replace(self, items: list[JSON], resource_version: str) -> None:
        informer = self._informer
        initial = not informer.has_synced()
        diff = informer.indexer.replace(items)
        for tombstone in diff.deleted:
            informer._distribute(DeleteNotification(tombstone))
        for obj in diff.added:
            informer._distribute(AddNotification(obj, initial))
        for old, new in diff.updated:
            informer._distribute(UpdateNotification(old, new))
        informer._synced.set()

    def add(self, obj: JSON) -> None:
        self._upsert(obj)

    def update(self, obj: JSON) -> None:
        self._upsert(obj)

    def _upsert(self, obj: JSON) -> None:
        old = self._informer.indexer.upsert(obj)
        if old is None:
            self._informer._distribute(AddNotification(obj, False))
        else:
            self._informer._distribute(UpdateNotification(old, obj))

    def delete(self, obj: JSON) -> None:
        self._informer.indexer.delete(object_key(obj))
        self._informer._distribute(DeleteNotification(obj))
