"""A small list+watch loop that keeps a local copy of one resource for the box.

The box's pod runtime and proxy need only "tell me every change, in order", so this
is a minimal reflector: list, then watch from the list's resourceVersion; a watch
that ends cleanly is resumed from the last version seen; 410 Gone (or any other
error) relists, and the relist reports objects that vanished meanwhile as deletions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import Resource

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Handler = Callable[[str, Obj], Awaitable[None] | None]  # (ADDED|MODIFIED|DELETED, obj)


def key_of(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


class Mirror:
    """Local copy of one resource (optionally one namespace / label selector)."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        handler: Handler,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        watch_timeout_s: int = 300,
    ) -> None:
        self.client = client
        self.resource = resource
        self.handler = handler
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout_s = watch_timeout_s
        self.objects: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self._version = ""

    async def run(self) -> None:
        backoff = 0.2
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except _Gone:
                need_list = True
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
                log.debug("%s watch: %s; relisting in %.1fs", self.resource.plural, err, backoff)
                need_list = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _params(self) -> dict[str, str | int | bool]:
        params: dict[str, str | int | bool] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params

    async def _list(self) -> None:
        answer = await self.client.list(self.resource, self.namespace, params=self._params())
        self._version = str(answer.get("metadata", {}).get("resourceVersion", ""))
        fresh = {key_of(o): o for o in answer.get("items") or []}
        for key in [k for k in self.objects if k not in fresh]:
            await self._emit("DELETED", self.objects.pop(key))
        for key, obj in fresh.items():
            kind = "MODIFIED" if key in self.objects else "ADDED"
            old = self.objects.get(key)
            self.objects[key] = obj
            if old is None or _version_of(old) != _version_of(obj):
                await self._emit(kind, obj)
        self.synced.set()

    async def _watch(self) -> None:
        params = self._params()
        params.update(
            {
                "resourceVersion": self._version,
                "allowWatchBookmarks": True,
                "timeoutSeconds": self.watch_timeout_s,
            }
        )
        path = self.resource.path(self.namespace)
        async for event in self.client.watch(path, params):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Gone
                raise ApiError(int(obj.get("code") or 500), obj)
            version = _version_of(obj)
            if version:
                self._version = version
            if kind == "BOOKMARK":
                continue
            key = key_of(obj)
            if kind == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            await self._emit(str(kind), obj)

    async def _emit(self, kind: str, obj: Obj) -> None:
        try:
            result = self.handler(kind, obj)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s handler failed on %s %s", self.resource.plural, kind, key_of(obj))


class _Gone(Exception):
    pass


def _version_of(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
