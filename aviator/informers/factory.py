"""InformerFactory: every component asking for the same watch shares one informer."""

from __future__ import annotations

import asyncio

from aviator.informers.shared_informer import SharedIndexInformer
from aviator.kube.client import ListWatchClient
from aviator.kube.projection import Projection
from aviator.kube.resources import Resource

InformerKey = tuple[Resource, str | None, str | None, str | None, Projection | None]


class InformerFactory:
    """One SharedIndexInformer per (resource, namespace, label selector, field selector,
    projection): readers sharing a cache share the fields it holds (aviator.kube.projection).

    As with client-go's SharedInformerFactory, informers requested after start() are
    started by the next start() call (it only starts those not yet running).
    """

    def __init__(self, client: ListWatchClient, *, resync_period: float | None = None) -> None:
        self._client = client
        self._resync_period = resync_period
        self._informers: dict[InformerKey, SharedIndexInformer] = {}
        self._started: set[InformerKey] = set()

    def informer_for(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        projection: Projection | None = None,
    ) -> SharedIndexInformer:
        key: InformerKey = (
            resource,
            namespace or None,
            label_selector or None,
            field_selector or None,
            projection,
        )
        informer = self._informers.get(key)
        if informer is None:
            informer = SharedIndexInformer(
                self._client,
                resource,
                namespace=key[1],
                label_selector=key[2],
                field_selector=key[3],
                resync_period=self._resync_period,
                projection=projection,
            )
            self._informers[key] = informer
        return informer

    def informers(self) -> list[SharedIndexInformer]:
        return list(self._informers.values())

    async def start(self) -> None:
        """Start every informer not started yet; returns at once."""
        for key, informer in self._informers.items():
            if key not in self._started:
                await informer.start()
                self._started.add(key)

    async def wait_for_cache_sync(self) -> None:
        """Wait until every started informer has stored its first list."""
        await asyncio.gather(*(self._informers[key].wait_for_sync() for key in self._started))

    async def stop(self) -> None:
        informers = [self._informers[key] for key in self._started]
        self._started.clear()
        await asyncio.gather(*(informer.stop() for informer in informers))
