"""An in-memory stand-in for the API server's list/watch of ConfigMaps, for unit tests.

It keeps a revision counter and an event history like etcd, serves lists (paginated when
asked), streams watches from any retained revision, and lets a test inject what real
servers do: 410 on expired versions, clean closes, cut connections, 429s.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from aviator.kube.client import ApiError

JSON = dict[str, Any]

CLOSE = "close"  # end the stream cleanly
BREAK = "break"  # cut the connection mid-stream


def gone(message: str = "too old resource version: 1 (2)") -> ApiError:
    return ApiError(410, {"code": 410, "reason": "Expired", "message": message})


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, JSON] = {}
        self.rv = 100
        self.history: list[tuple[int, str, JSON]] = []
        self.oldest_watchable = 0  # watches from before this revision get 410
        self.list_calls: list[dict[str, str | int | bool]] = []
        self.watch_calls: list[dict[str, str | int | bool]] = []
        self.list_faults: list[BaseException] = []  # raised by the next lists, in order
        self.watch_faults: list[BaseException] = []  # raised by the next watch starts
        self.list_items_seen_rv: list[str] = []
        self._watchers: list[asyncio.Queue[tuple[str, JSON] | str]] = []
        self.watch_started = asyncio.Event()

    # Mutations, as the apiserver would record them.

    def _record(self, kind: str, obj: JSON) -> JSON:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, obj))
        for queue in self._watchers:
            queue.put_nowait((kind, copy.deepcopy(obj)))
        return obj

    def create(self, name: str, namespace: str = "default", **data: str) -> JSON:
        key = f"{namespace}/{name}"
        assert key not in self.objects
        obj = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "data": dict(data),
        }
        self.objects[key] = self._record("ADDED", obj)
        return self.objects[key]

    def update(self, name: str, namespace: str = "default", **data: str) -> JSON:
        key = f"{namespace}/{name}"
        obj = copy.deepcopy(self.objects[key])
        obj["data"] = dict(data)
        self.objects[key] = self._record("MODIFIED", obj)
        return self.objects[key]

    def delete(self, name: str, namespace: str = "default") -> JSON:
        obj = self.objects.pop(f"{namespace}/{name}")
        return self._record("DELETED", obj)

    def bookmark(self) -> None:
        self.rv += 1  # something elsewhere in etcd moved the revision
        obj = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.rv)},
        }
        for queue in self._watchers:
            queue.put_nowait(("BOOKMARK", obj))

    def compact(self) -> None:
        """Forget history: watches from older revisions now get 410."""
        self.oldest_watchable = self.rv
        self.history.clear()

    def expire_watches(self) -> None:
        """Send every open watch an ERROR 410 event (what a compacted watch cache does)."""
        status = {
            "kind": "Status",
            "code": 410,
            "reason": "Expired",
            "message": "too old resource version",
        }
        for queue in self._watchers:
            queue.put_nowait(("ERROR", status))

    def close_watches(self) -> None:
        for queue in self._watchers:
            queue.put_nowait(CLOSE)

    def break_watches(self) -> None:
        for queue in self._watchers:
            queue.put_nowait(BREAK)

    def open_watches(self) -> int:
        return len(self._watchers)

    # The client API the Reflector uses.

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
    ) -> JSON:
        assert method == "GET"
        params = dict(params or {})
        self.list_calls.append(params)
        await asyncio.sleep(0)
        if self.list_faults:
            raise self.list_faults.pop(0)
        items = [copy.deepcopy(o) for _, o in sorted(self.objects.items())]
        for item in items:  # list items carry no kind/apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
        selector = params.get("labelSelector")
        if selector:
            k, _, v = str(selector).partition("=")
            items = [i for i in items if (i["metadata"].get("labels") or {}).get(k) == v]
        start = int(params.get("continue") or 0)
        limit = int(params.get("limit") or 0)
        meta: JSON = {"resourceVersion": str(self.rv)}
        if limit:
            page = items[start : start + limit]
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
            items = page
        return {"kind": "ConfigMapList", "metadata": meta, "items": items}

    async def watch(
        self, path: str, params: Mapping[str, str | int | bool] | None = None
    ) -> AsyncIterator[JSON]:
        params = dict(params or {})
        self.watch_calls.append(params)
        self.watch_started.set()
        await asyncio.sleep(0)
        if self.watch_faults:
            raise self.watch_faults.pop(0)
        since = int(params["resourceVersion"])
        if since < self.oldest_watchable:
            status = {
                "kind": "Status",
                "code": 410,
                "reason": "Expired",
                "message": "too old resource version",
            }
            yield {"type": "ERROR", "object": status}
            return
        queue: asyncio.Queue[tuple[str, JSON] | str] = asyncio.Queue()
        for rv, kind, obj in self.history:
            if rv > since:
                queue.put_nowait((kind, copy.deepcopy(obj)))
        self._watchers.append(queue)
        try:
            while True:
                item = await queue.get()
                if item == CLOSE:
                    return
                if item == BREAK:
                    raise aiohttp.ClientPayloadError("Response payload is not completed")
                assert isinstance(item, tuple)
                yield {"type": item[0], "object": item[1]}
        finally:
            self._watchers.remove(queue)
