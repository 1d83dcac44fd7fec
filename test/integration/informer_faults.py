"""Client-side fault injection for informer tests against the real API server.

`FaultyClient` wraps a real `KubeClient`: every list and watch goes to the real
kube-apiserver, and the test decides what the network does on the way back. It can cut
an open watch stream mid-way, end it cleanly, hand it a 410 ERROR event, let it go
silent (a half-open connection), hold new watches back while the test writes, and
answer the next lists or watches with an error. It records what the reflector asked for
and what it was given, and wakes waiting tests on every change.

Also here: recorders of what a reflector or an informer delivered, and `converge`, which
waits until a handler's rebuilt state equals the server's. Every wait is bounded and, when
it fails, says what it waited for and what the reflector was doing (e.g. a watch held by
the test itself), so a stuck reflector fails a test in seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from aviator.informers import (
    Backoff,
    DeletedFinalStateUnknown,
    object_key,
    resource_version,
)
from aviator.kube import ApiError, KubeClient
from aviator.kube.projection import Projection
from aviator.kube.resources import CONFIGMAPS
from aviator.testing.waiting import eventually

JSON = dict[str, Any]
Params = dict[str, str | int | bool]

_END = "end"  # the real server ended the stream


# Errors a real API server (or the network in front of it) produces.


def gone(message: str = "too old resource version: 1 (2)") -> ApiError:
    return ApiError(410, {"kind": "Status", "code": 410, "reason": "Expired", "message": message})


def too_many_requests() -> ApiError:
    return ApiError(429, {"kind": "Status", "code": 429, "reason": "TooManyRequests"})


def unavailable() -> ApiError:
    return ApiError(503, {"kind": "Status", "code": 503, "reason": "ServiceUnavailable"})


def expired_event() -> JSON:
    """The ERROR event a watch cache sends when it can no longer serve a watch."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": 410,
        "reason": "Expired",
        "message": "too old resource version: 1 (2)",
    }
    return {"type": "ERROR", "object": status}


@dataclass(eq=False)
class _Stream:
    """One open watch: what the real server sent, plus whatever the test injects."""

    queue: asyncio.Queue[JSON | BaseException | str] = field(default_factory=asyncio.Queue)
    stalled: bool = False


class FaultyClient:
    """The reflector's view of a real KubeClient, with faults injected on the client side."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.list_calls: list[Params] = []
        self.list_versions: list[str] = []  # resourceVersion of each list page answered
        self.watch_calls: list[Params] = []
        self.events: list[JSON] = []  # watch events handed to the caller, in order
        self.list_faults: list[BaseException] = []  # raised by the next lists, in order
        self.watch_faults: list[BaseException] = []  # raised by the next watch starts
        self.stall_new_watches = False  # new watches deliver nothing and never end
        # Called before each list goes to the server (e.g. to compact between pages).
        self.before_list: Callable[[Params], Any] | None = None
        self._streams: set[_Stream] = set()
        self._hold: asyncio.Event | None = None
        self._waiting_on_hold = 0
        self._changed = asyncio.Event()

    # The ListWatchClient protocol.

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
        decode: Callable[[bytes], JSON] | None = None,
    ) -> JSON:
        query = dict(params or {})
        self.list_calls.append(query)
        self._notify()
        if self.list_faults:
            raise self.list_faults.pop(0)
        if self.before_list is not None:
            result = self.before_list(query)
            if asyncio.iscoroutine(result):
                await result
        page = await self.client.request(
            method,
            path,
            params=params,
            body=body,
            content_type=content_type,
            timeout_s=timeout_s,
            decode=decode,
        )
        self.list_versions.append(str((page.get("metadata") or {}).get("resourceVersion") or ""))
        return page

    async def watch(
        self,
        path: str,
        params: Mapping[str, str | int | bool] | None = None,
        *,
        drop_managed_fields: bool = False,
        projection: Projection | None = None,
    ) -> AsyncIterator[JSON]:
        query = dict(params or {})
        self.watch_calls.append(query)
        self._notify()
        hold = self._hold
        if hold is not None:
            self._waiting_on_hold += 1
            self._notify()
            try:
                await hold.wait()
            finally:
                self._waiting_on_hold -= 1
        if self.watch_faults:
            raise self.watch_faults.pop(0)
        stream = _Stream(stalled=self.stall_new_watches)
        pump = asyncio.create_task(self._pump(path, query, stream, drop_managed_fields, projection))
        self._streams.add(stream)
        self._notify()
        try:
            while True:
                item = await stream.queue.get()
                if stream.stalled:
                    await asyncio.Future()  # silent until the caller gives up
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, str):
                    return
                self.events.append(item)
                yield item
                self._notify()  # the caller has handled the event
        finally:
            self._streams.discard(stream)
            pump.cancel()  # closes the real connection if it is still open
            await asyncio.gather(pump, return_exceptions=True)
            self._notify()

    async def _pump(
        self,
        path: str,
        query: Params,
        stream: _Stream,
        drop_managed_fields: bool,
        projection: Projection | None,
    ) -> None:
        try:
            async for event in self.client.watch(
                path, query, drop_managed_fields=drop_managed_fields, projection=projection
            ):
                stream.queue.put_nowait(event)
        except Exception as err:
            stream.queue.put_nowait(err)
        else:
            stream.queue.put_nowait(_END)

    # Faults on open watches. Events already received are delivered first, as a
    # connection delivers what it buffered before it fails.

    def cut_watches(self, error: BaseException | None = None) -> None:
        """Break every open watch stream mid-way (default: an incomplete chunked payload)."""
        for stream in self._streams:
            stream.queue.put_nowait(
                error or aiohttp.ClientPayloadError("Response payload is not completed")
            )

    def close_watches(self) -> None:
        """End every open watch cleanly, as the server does at timeoutSeconds."""
        for stream in self._streams:
            stream.queue.put_nowait(_END)

    def expire_watches(self) -> None:
        """Send every open watch a 410 ERROR event."""
        for stream in self._streams:
            stream.queue.put_nowait(expired_event())

    def hold_watches(self) -> None:
        """New watch requests wait (disconnected) until release_watches()."""
        if self._hold is None:
            self._hold = asyncio.Event()

    def release_watches(self) -> None:
        if self._hold is not None:
            self._hold.set()
            self._hold = None

    def open_watches(self) -> int:
        return len(self._streams)

    def held_watches(self) -> int:
        """Watch requests waiting on hold_watches()."""
        return self._waiting_on_hold

    # Waiting for the reflector.

    def _notify(self) -> None:
        self._changed.set()

    async def until(
        self, predicate: Callable[[], bool], within: float = 20.0, what: str = ""
    ) -> None:
        """Wait until predicate holds; re-checked whenever a list, watch or event happens.

        Fails after `within` seconds with `what` and this client's view of the reflector.
        """
        await eventually(
            predicate,
            within=within,
            what=what or _describe_predicate(predicate),
            changed=self._changed,
            state=self.describe,
        )

    def describe(self) -> str:
        """What the reflector has asked for and been given so far (for failure messages)."""
        last = [
            f"{e.get('type')}@{resource_version(e.get('object') or {})}" for e in self.events[-5:]
        ]
        faults = [type(f).__name__ for f in self.list_faults + self.watch_faults]
        return (
            f"reflector via FaultyClient: {len(self.list_calls)} lists, "
            f"{len(self.watch_calls)} watches, {self.open_watches()} open, "
            f"{self.held_watches()} held by the test{' (hold on)' if self._hold else ''}, "
            f"{len(self.events)} events (last: {', '.join(last) or '-'}), "
            f"pending faults: {faults or '-'}"
        )

    def watch_events(self, kind: str) -> list[JSON]:
        return [e for e in self.events if e.get("type") == kind]


# What a reflector or an informer delivered.


class ListStore:
    """A ReflectorStore that keeps a dict and a log of calls."""

    def __init__(self) -> None:
        self.items: dict[str, JSON] = {}
        self.calls: list[tuple[str, str]] = []

    def replace(self, items: list[JSON], resource_version: str) -> None:
        self.items = {object_key(o): o for o in items}
        self.calls.append(("replace", resource_version))

    def add(self, obj: JSON) -> None:
        self.items[object_key(obj)] = obj
        self.calls.append(("add", object_key(obj)))

    def update(self, obj: JSON) -> None:
        self.items[object_key(obj)] = obj
        self.calls.append(("update", object_key(obj)))

    def delete(self, obj: JSON) -> None:
        self.items.pop(object_key(obj), None)
        self.calls.append(("delete", object_key(obj)))

    def versions(self) -> dict[str, str]:
        return {k: resource_version(o) for k, o in self.items.items()}


class Recorder:
    """Records ("add"|"update"|"delete"|"tombstone", key, detail) tuples in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._changed = asyncio.Event()

    async def _note(self, event: tuple[str, str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    async def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        await self._note(("add", object_key(obj), is_initial_list))

    async def on_update(self, old: JSON, new: JSON) -> None:
        await self._note(("update", object_key(new), (old, new)))

    async def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        kind = "tombstone" if isinstance(obj, DeletedFinalStateUnknown) else "delete"
        await self._note((kind, object_key(obj), obj))

    async def wait_for(
        self, predicate: Callable[[], bool], within: float = 20.0, what: str = ""
    ) -> None:
        await eventually(
            predicate,
            within=within,
            what=what or _describe_predicate(predicate),
            changed=self._changed,
            state=lambda: f"handler got {[(kind, key) for kind, key, _ in self.events]}",
        )


class StrictMirror:
    """Rebuilds state from notifications alone; records anything ill-formed.

    An add of a cached key, an update or delete of an unknown key, an update that is not
    newer or whose `old` is not what this handler last saw: each is a problem.
    """

    def __init__(self) -> None:
        self.state: dict[str, JSON] = {}
        self.problems: list[str] = []
        self.tombstones = 0
        self.changed = asyncio.Event()

    def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        key = object_key(obj)
        if key in self.state:
            self.problems.append(f"add of cached {key}")
        self.state[key] = obj
        self.changed.set()

    def on_update(self, old: JSON, new: JSON) -> None:
        key = object_key(new)
        seen = self.state.get(key)
        if seen is None:
            self.problems.append(f"update of unknown {key}")
        elif int(resource_version(new)) <= int(resource_version(seen)):
            self.problems.append(f"update of {key} not newer")
        elif seen is not old:
            self.problems.append(f"update of {key} with a stale old object")
        self.state[key] = new
        self.changed.set()

    def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        key = object_key(obj)
        if key not in self.state:
            self.problems.append(f"delete of unknown {key}")
        if isinstance(obj, DeletedFinalStateUnknown):
            self.tombstones += 1
        self.state.pop(key, None)
        self.changed.set()

    def versions(self) -> dict[str, str]:
        return {k: resource_version(o) for k, o in self.state.items()}


class RecordingBackoff(Backoff):
    """A fast Backoff that counts the failures it was told about."""

    def __init__(self) -> None:
        super().__init__(initial_s=0.001, max_s=0.01)
        self.failures = 0

    def failure(self, now: float) -> float:
        self.failures += 1
        return super().failure(now)


# The server's side of the comparison.


def configmap(name: str, labels: Mapping[str, str] | None = None, **data: str) -> JSON:
    meta: JSON = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"metadata": meta, "data": dict(data)}


async def server_versions(
    kube: KubeClient, namespace: str, label_selector: str | None = None
) -> dict[str, str]:
    """key → resourceVersion from a quorum list (what etcd holds now)."""
    params: Params = {"resourceVersion": ""}
    if label_selector:
        params["labelSelector"] = label_selector
    listed = await kube.list(CONFIGMAPS, namespace, params=params)
    return {object_key(o): resource_version(o) for o in listed["items"]}


def version_diff(mirror: Mapping[str, str], server: Mapping[str, str]) -> str:
    """How a handler's key → resourceVersion map differs from the server's."""
    missing = sorted(set(server) - set(mirror))
    extra = sorted(set(mirror) - set(server))
    stale = {
        k: (mirror[k], server[k])
        for k in sorted(set(mirror) & set(server))
        if mirror[k] != server[k]
    }
    return (
        f"missing (on the server, never delivered or lost): {missing}; "
        f"extra (deleted on the server, no delete delivered): {extra}; "
        f"stale (handler, server): {stale}"
    )


async def converge(
    versions: Callable[[], dict[str, str]],
    changed: asyncio.Event,
    kube: KubeClient,
    namespace: str,
    *,
    label_selector: str | None = None,
    within: float = 20.0,
    state: Callable[[], str] | None = None,
) -> dict[str, str]:
    """Wait until a handler's key → resourceVersion equals a quorum list of the server.

    Re-checked whenever the handler changes and at least every second (the server may move
    without the handler hearing of it yet); fails with the difference after `within` s.
    Returns the server's state it matched.
    """
    truth: dict[str, str] = {}

    async def equal() -> bool:
        nonlocal truth
        truth = await server_versions(kube, namespace, label_selector)
        return versions() == truth

    def describe() -> str:
        diff = version_diff(versions(), truth)
        return f"{diff}\n{state()}" if state is not None else diff

    await eventually(
        equal,
        within=within,
        what="the handler's state to equal the server's",
        changed=changed,
        recheck_s=1.0,
        state=describe,
    )
    return truth


def _describe_predicate(predicate: Callable[..., Any]) -> str:
    """The source of a lambda predicate, as the default message of a failed wait."""
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
    return source if len(source) < 300 else source[:300] + "..."


async def watch_cache_reached(kube: KubeClient, namespace: str, version: str) -> None:
    """Return once the API server's watch cache has seen `version`.

    A list with resourceVersionMatch=NotOlderThan is served from the watch cache, which
    waits until it is that new; afterwards a resourceVersion="0" list includes every
    write up to `version`.
    """
    await kube.list(
        CONFIGMAPS,
        namespace,
        params={"resourceVersion": version, "resourceVersionMatch": "NotOlderThan"},
    )
