"""The Reflector: keeps a store equal to the server's view of one resource (list + watch).

Semantics follow client-go's tools/cache Reflector:

- The first list asks for resourceVersion "0" (served from the apiserver's watch cache,
  not paginated); the store is Replaced with the result.
- Then it watches from the last seen resourceVersion with allowWatchBookmarks and a
  random 5-10 min timeoutSeconds. Every event and bookmark advances the version. A clean
  close (the timeout) re-watches from there without relisting.
- A watch that stays silent is abandoned and re-watched from the same version: the API
  server sends a bookmark to every bookmark-enabled watch at least once a minute, so a
  watch with nothing (no headers, no event, no bookmark) for WATCH_IDLE_S hangs on a
  connection that is gone (a half-open TCP connection, a request that never got through)
  and would otherwise hold the informer for the rest of its timeoutSeconds.
- 410 Gone, an ERROR event with code 410, or "too old resource version" relists from the
  last seen version; if that list is itself 410 (or "too large resource version"), the
  next list is a quorum read with resourceVersion "" (paginated, limit 500 + continue).
- With drop_managed_fields (the default), objects reach the store without
  metadata.managedFields, listed or watched (aviator.kube.managedfields): nothing
  reading a cache needs it, and a watch then does not even decode it. With a
  projection, they reach it holding only the projection's fields, listed or watched
  (aviator.kube.projection); a watch decodes no other.
- Connection errors, 429 and 5xx back off (0.8 s doubling to 30 s, reset after 2 min
  without failures) and re-watch from the same version; a watch stream cut mid-way
  (aiohttp payload error, reset connection) re-watches at once if it was healthy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Protocol

import aiohttp

from aviator.informers.backoff import Backoff
from aviator.informers.keys import JSON, resource_version
from aviator.kube.client import ApiError, ListWatchClient
from aviator.kube.managedfields import drop_managed_fields as without_managed_fields
from aviator.kube.projection import Projection
from aviator.kube.resources import Resource

log = logging.getLogger(__name__)

PAGE_SIZE = 500
MIN_WATCH_TIMEOUT_S = 300.0
# A watch that ends sooner than this without any event counts as a failure, so a
# server that closes watches at once cannot make us spin.
SHORT_WATCH_S = 1.0
# How often a busy watch moves its idle bound (each move costs a timer handle).
RESCHEDULE_EVERY_S = 1.0
WATCH_DEADLINE_MARGIN_S = 30.0
# The API server's bookmark period is one minute (its cacher's defaultBookmarkFrequency);
# two and a half of them without a byte is a dead connection, not a quiet resource.
WATCH_IDLE_S = 150.0

# Errors that mean the transport failed, not the request: retried with backoff.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
    json.JSONDecodeError,
)


class ReflectorStore(Protocol):
    """Where a Reflector puts what it sees (the informer applies and distributes it)."""

    def replace(self, items: list[JSON], resource_version: str) -> None: ...

    def add(self, obj: JSON) -> None: ...

    def update(self, obj: JSON) -> None: ...

    def delete(self, obj: JSON) -> None: ...


class _Relist(Exception):
    """The watch cannot continue from the last version: list again."""


def is_expired(err: ApiError) -> bool:
    """410 Gone / Expired, or a "too old resource version" message in any wrapping."""
    return err.gone or err.reason == "Expired" or "too old resource version" in err.message


def is_too_large_resource_version(err: ApiError) -> bool:
    """The server has not caught up with the version we asked for (a restarted server)."""
    return "too large resource version" in err.message.lower()


def is_retryable(err: ApiError) -> bool:
    """429 and server-side errors: the same request may well succeed later."""
    return err.status == 429 or err.status >= 500


class Reflector:
    """Lists and watches one resource into a ReflectorStore until cancelled."""

    def __init__(
        self,
        client: ListWatchClient,
        resource: Resource,
        store: ReflectorStore,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = PAGE_SIZE,
        min_watch_timeout_s: float = MIN_WATCH_TIMEOUT_S,
        backoff: Backoff | None = None,
        list_timeout_s: float = 60.0,
        watch_deadline_margin_s: float = WATCH_DEADLINE_MARGIN_S,
        watch_idle_s: float = WATCH_IDLE_S,
        drop_managed_fields: bool = True,
        projection: Projection | None = None,
    ) -> None:
        self._client = client
        self._resource = resource
        self._store = store
        self._namespace = namespace
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["labelSelector"] = label_selector
        if field_selector:
            self._selectors["fieldSelector"] = field_selector
        self._page_size = page_size
        self._min_watch_timeout_s = min_watch_timeout_s
        self.backoff = backoff or Backoff(jitter=0.25)
        self._list_timeout_s = list_timeout_s
        self._watch_deadline_margin_s = watch_deadline_margin_s
        self._watch_idle_s = watch_idle_s
        self._drop_managed_fields = drop_managed_fields
        self._projection = projection
        self._path = resource.path(namespace)
        self.last_sync_resource_version = ""
        # Set when listing from last_sync_resource_version failed with 410: the next
        # list must be a quorum read.
        self._version_unavailable = False
        self._relists_without_events = 0
        self.lists = 0  # completed lists (observability and tests)
        self.watches = 0  # watch requests started
        self.expirations = 0  # watches that ended in 410 / too old resource version
        self.abandoned_watches = 0  # watches given up for silence

    @property
    def resource(self) -> Resource:
        return self._resource

    def describe(self) -> str:
        where = f" in {self._namespace}" if self._namespace else ""
        sel = f" {self._selectors}" if self._selectors else ""
        return f"{self._resource.plural}{where}{sel}"

    async def run(self) -> None:
        """List, then watch forever; only cancellation ends it.

        Run again after a cancellation, it resumes watching from the last version (the
        store still holds that state); the server answers 410 if that is too old.
        """
        need_list = not self.last_sync_resource_version
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
            except _Relist as why:
                log.info("reflector %s: relisting: %s", self.describe(), why)
                self.expirations += 1
                need_list = True
                if self._relists_without_events:
                    # Expired again before any event: do not hammer the server.
                    await self._back_off("watch expired again without progress")
                self._relists_without_events += 1
            except ApiError as err:
                if (
                    need_list
                    and not self._version_unavailable
                    and (is_expired(err) or is_too_large_resource_version(err))
                ):
                    # Listing from our version failed: retry at once with a quorum read.
                    log.info("reflector %s: list expired, quorum relist", self.describe())
                    self._version_unavailable = True
                    continue
                await self._back_off(f"{err}")
                if not is_retryable(err) and not need_list:
                    need_list = True
            except TRANSPORT_ERRORS as err:
                await self._back_off(f"{type(err).__name__}: {err}")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reflector %s: unexpected error", self.describe())
                need_list = True
                await self._back_off("unexpected error")

    async def _back_off(self, reason: str) -> None:
        delay = self.backoff.failure(_now())
        log.warning("reflector %s: %s; retrying in %.1fs", self.describe(), reason, delay)
        await asyncio.sleep(delay)

    # Listing.

    def _list_resource_version(self) -> str:
        if self._version_unavailable:
            return ""
        return self.last_sync_resource_version or "0"

    async def _list(self) -> None:
        version = self._list_resource_version()
        items, list_version = await self._list_all(version)
        self._store.replace(items, list_version)
        self.last_sync_resource_version = list_version
        self._version_unavailable = False
        self.lists += 1
        log.debug(
            "reflector %s: listed %d at %s (asked %r)",
            self.describe(),
            len(items),
            list_version,
            version,
        )

    async def _list_all(self, version: str) -> tuple[list[JSON], str]:
        """One full list; paginated only for quorum reads (the cache ignores limit)."""
        paginate = version == ""
        items: list[JSON] = []
        cont = ""
        while True:
            params: dict[str, str | int | bool] = dict(self._selectors)
            params["resourceVersion"] = version
            if paginate:
                params["limit"] = self._page_size
                if cont:
                    params["continue"] = cont
            try:
                page = await self._client.request(
                    "GET",
                    self._path,
                    params=params,
                    timeout_s=self._list_timeout_s,
                    decode=None if self._projection is None else self._projection.decode_list,
                )
            except ApiError as err:
                if cont and is_expired(err):
                    # The continue token expired (compaction between pages): one unpaginated
                    # quorum list instead, as client-go's pager does.
                    paginate, cont, items = False, "", []
                    continue
                raise
            items.extend(self._typed(page.get("items") or []))
            meta = page.get("metadata") or {}
            cont = str(meta.get("continue") or "")
            if not paginate or not cont:
                return items, str(meta.get("resourceVersion") or "")

    def _typed(self, items: list[JSON]) -> list[JSON]:
        # List items carry no kind/apiVersion; watch events do. Make them alike. (With a
        # projection, the list was decoded projected: `Projection.decode_list`.)
        for item in items:
            item.setdefault("kind", self._resource.kind)
            item.setdefault("apiVersion", self._resource.api_version)
            if self._drop_managed_fields and self._projection is None:
                without_managed_fields(item)
        return items

    # Watching.

    async def _watch(self) -> None:
        """Watch until the stream ends; return to re-watch, raise _Relist to relist."""
        timeout_s = max(1, int(self._min_watch_timeout_s * (1.0 + random.random())))
        params: dict[str, str | int | bool] = dict(self._selectors)
        params.update(
            resourceVersion=self.last_sync_resource_version,
            allowWatchBookmarks=True,
            timeoutSeconds=timeout_s,
        )
        started = _now()
        # The server ends the watch at timeoutSeconds; a connection that went silent
        # without a reset (half-open TCP, a request held on the way) is given up after
        # watch_idle_s without a line, and in any case a little after timeoutSeconds.
        hard_deadline = started + timeout_s + self._watch_deadline_margin_s

        def deadline(now: float) -> float:
            return min(hard_deadline, now + self._watch_idle_s)

        events = 0
        last_line = rescheduled = started
        self.watches += 1
        bound = asyncio.timeout_at(deadline(started))
        now = asyncio.get_running_loop().time
        try:
            async with bound:
                async for event in self._client.watch(
                    self._path,
                    params,
                    drop_managed_fields=self._drop_managed_fields,
                    projection=self._projection,
                ):
                    self._handle(event)
                    events += 1
                    last_line = now()
                    # Moving the bound costs a timer handle; once a second is enough for
                    # an idle limit of many seconds (the bound stays idle_s..idle_s + 1 s).
                    if last_line - rescheduled >= RESCHEDULE_EVERY_S:
                        bound.reschedule(deadline(last_line))
                        rescheduled = last_line
        except ApiError as err:
            if is_expired(err):
                raise _Relist(str(err)) from err
            raise
        except TRANSPORT_ERRORS as err:
            if isinstance(err, TimeoutError) and bound.expired():
                # Silent past its bound: the connection is gone, the version still good.
                self.abandoned_watches += 1
                log.info(
                    "reflector %s: watch past its bound (silent %.0fs, %d events); re-watching",
                    self.describe(),
                    _now() - last_line,
                    events,
                )
            elif events or _now() - started > SHORT_WATCH_S:
                # A long watch cut by the network or a server restart: re-watch from
                # where we are; if the server is down, the next attempt backs off.
                log.info(
                    "reflector %s: watch broke after %d events: %s: %s",
                    self.describe(),
                    events,
                    type(err).__name__,
                    err,
                )
                return
            else:
                raise
        if not events and _now() - started < SHORT_WATCH_S:
            await self._back_off("watch closed at once with no events")

    def _handle(self, event: JSON) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"watch event without object: {event!r}")
        if kind == "ERROR":
            status = ApiError(int(obj.get("code") or 500), obj, str(obj.get("message", "")))
            if is_expired(status):
                raise _Relist(str(status))
            raise status
        if kind == "ADDED":
            self._store.add(obj)
        elif kind == "MODIFIED":
            self._store.update(obj)
        elif kind == "DELETED":
            self._store.delete(obj)
        elif kind != "BOOKMARK":
            raise ValueError(f"unknown watch event type {kind!r}")
        version = resource_version(obj)
        if version:
            self.last_sync_resource_version = version
        self._relists_without_events = 0


def _now() -> float:
    return asyncio.get_running_loop().time()
