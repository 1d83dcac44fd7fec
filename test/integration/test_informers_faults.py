"""Reflector and informer semantics against the real API server, faults injected client-side.

Every list and watch here is served by the real kube-apiserver; `FaultyClient` decides
what the network does to the answers (cut streams, clean closes, 410s, 429s, silence).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import uvloop
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from informer_faults import (
    FaultyClient,
    ListStore,
    Recorder,
    RecordingBackoff,
    StrictMirror,
    configmap,
    converge,
    gone,
    server_versions,
    too_many_requests,
    unavailable,
    watch_cache_reached,
)

from aviator.informers import (
    NAMESPACE_INDEX,
    DeletedFinalStateUnknown,
    FuncHandler,
    InformerFactory,
    Reflector,
    SharedIndexInformer,
    object_key,
    resource_version,
)
from aviator.kube import ApiError, KubeClient
from aviator.kube.resources import CONFIGMAPS, PODS
from aviator.testing.controlplane import ControlPlane
from aviator.testing.waiting import bounded

pytestmark = pytest.mark.integration

JSON = dict[str, Any]


@dataclass
class Running:
    """A reflector running against the real server through a FaultyClient."""

    client: FaultyClient
    store: ListStore
    reflector: Reflector
    backoff: RecordingBackoff
    namespace: str

    def key(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def last_event_version(self) -> str:
        return resource_version(self.client.events[-1]["object"])


async def start_reflector(
    kube: KubeClient, namespace: str, **kwargs: Any
) -> tuple[Running, asyncio.Task[None]]:
    client = FaultyClient(kube)
    store = ListStore()
    backoff = RecordingBackoff()
    reflector = Reflector(client, CONFIGMAPS, store, namespace=namespace, backoff=backoff, **kwargs)
    task = asyncio.create_task(reflector.run())
    return Running(client, store, reflector, backoff, namespace), task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def running(kube: KubeClient, namespace: str) -> AsyncIterator[Running]:
    await kube.create(CONFIGMAPS, configmap("pre", v="0"), namespace)
    run, task = await start_reflector(kube, namespace)
    await run.client.until(lambda: run.client.open_watches() == 1)
    await run.client.until(lambda: run.key("pre") in run.store.items)
    yield run
    await stop(task)


async def converged(run: Running, kube: KubeClient) -> bool:
    return run.store.versions() == await server_versions(kube, run.namespace)


# Reflector: list, watch, versions.


async def test_first_list_from_watch_cache_then_watch_from_list_version(
    running: Running,
) -> None:
    client, store = running.client, running.store
    assert client.list_calls == [{"resourceVersion": "0"}]  # no limit: served from cache
    assert store.calls[0][0] == "replace"
    listed_at = store.calls[0][1]
    watch = client.watch_calls[0]
    assert watch["resourceVersion"] == listed_at
    assert watch["allowWatchBookmarks"] is True
    assert 300 <= int(watch["timeoutSeconds"]) <= 600
    pre = store.items[running.key("pre")]
    assert pre["kind"] == "ConfigMap"  # list items made alike to watch objects
    assert pre["apiVersion"] == "v1"


async def test_events_advance_the_version_in_order(running: Running, kube: KubeClient) -> None:
    ns = running.namespace
    start = len(running.store.calls)
    await kube.create(CONFIGMAPS, configmap("a", k="1"), ns)
    await kube.patch(CONFIGMAPS, "a", {"data": {"k": "2"}}, ns)
    await kube.delete(CONFIGMAPS, "pre", ns)
    await running.client.until(lambda: len(running.store.calls) == start + 3)
    assert running.store.calls[start:] == [
        ("add", running.key("a")),
        ("update", running.key("a")),
        ("delete", running.key("pre")),
    ]
    versions = [int(resource_version(e["object"])) for e in running.client.events[-3:]]
    assert versions == sorted(versions)
    assert running.reflector.last_sync_resource_version == str(versions[-1])
    assert await converged(running, kube)


async def test_bookmarks_advance_the_version_and_server_timeouts_rewatch_without_relist(
    kube: KubeClient, namespace: str
) -> None:
    """The server ends each watch at timeoutSeconds; bookmarks carry the version past
    writes the selector hides, so the next watch starts after them."""
    # The server sends a bookmark 2 s before a watch's deadline, if that moment is still
    # ahead when it registers the watch: 6-11 s watches leave it time even when loaded.
    run, task = await start_reflector(
        kube, namespace, label_selector="watched=yes", min_watch_timeout_s=6.0
    )
    try:
        await run.client.until(lambda: run.client.open_watches() == 1)
        assert 6 <= int(run.client.watch_calls[0]["timeoutSeconds"]) <= 11
        # A bookmark carries the newest version its watch cache has processed, and only
        # if that is newer than what the watch started at, hidden events included. So
        # `hidden` must be written once the server has registered this watch (a canary
        # the selector shows has come through it), not before: a watch registered after
        # it never gets a bookmark past it until something else changes.
        await kube.create(CONFIGMAPS, configmap("canary", labels={"watched": "yes"}), namespace)
        await run.client.until(lambda: run.key("canary") in run.store.items)
        hidden = await kube.create(CONFIGMAPS, configmap("hidden"), namespace)
        hidden_version = int(resource_version(hidden))

        def bookmarked() -> bool:
            marks = run.client.watch_events("BOOKMARK")
            return any(int(resource_version(m["object"])) >= hidden_version for m in marks)

        await run.client.until(bookmarked, what="a bookmark past the hidden write")
        assert int(run.reflector.last_sync_resource_version) >= hidden_version
        assert list(run.store.items) == [run.key("canary")]
        # The server ends this watch at its timeout; the next one starts past `hidden`.
        watches = len(run.client.watch_calls)
        await run.client.until(lambda: len(run.client.watch_calls) > watches)
        assert int(run.client.watch_calls[-1]["resourceVersion"]) >= hidden_version
        assert run.reflector.lists == 1
        assert run.backoff.failures == 0
    finally:
        await stop(task)


async def test_clean_close_rewatches_from_last_version_without_relist(
    running: Running, kube: KubeClient
) -> None:
    client, ns = running.client, running.namespace
    await kube.create(CONFIGMAPS, configmap("a"), ns)
    await client.until(lambda: running.key("a") in running.store.items)
    seen = running.last_event_version()
    client.close_watches()
    await client.until(lambda: len(client.watch_calls) == 2 and client.open_watches() == 1)
    assert client.watch_calls[1]["resourceVersion"] == seen
    await kube.create(CONFIGMAPS, configmap("b"), ns)
    await client.until(lambda: running.key("b") in running.store.items)
    assert running.reflector.lists == 1
    assert running.backoff.failures == 0


@pytest.mark.parametrize(
    "cut",
    [
        aiohttp.ClientPayloadError("Response payload is not completed"),
        ConnectionResetError(104, "Connection reset by peer"),
        aiohttp.ServerDisconnectedError(),
    ],
    ids=["payload", "reset", "disconnected"],
)
async def test_cut_watch_rewatches_at_once_and_loses_nothing_written_meanwhile(
    running: Running, kube: KubeClient, cut: BaseException
) -> None:
    client, ns = running.client, running.namespace
    await kube.create(CONFIGMAPS, configmap("a"), ns)
    await client.until(lambda: running.key("a") in running.store.items)
    seen = running.last_event_version()
    client.hold_watches()
    client.cut_watches(cut)
    await client.until(lambda: client.held_watches() == 1)
    # Written while no watch is open: the next watch must still deliver them.
    await kube.create(CONFIGMAPS, configmap("b"), ns)
    await kube.delete(CONFIGMAPS, "pre", ns)
    client.release_watches()
    await client.until(
        lambda: (
            running.key("b") in running.store.items
            and running.key("pre") not in running.store.items
        )
    )
    assert client.watch_calls[1]["resourceVersion"] == seen
    assert running.reflector.lists == 1
    assert running.backoff.failures == 0  # a healthy watch that broke: no waiting
    assert await converged(running, kube)


async def test_watch_start_errors_back_off_and_rewatch_from_the_same_version(
    running: Running, kube: KubeClient
) -> None:
    client = running.client
    await kube.create(CONFIGMAPS, configmap("a"), running.namespace)
    await client.until(lambda: running.key("a") in running.store.items)
    seen = running.last_event_version()
    client.watch_faults = [
        too_many_requests(),
        ConnectionRefusedError(111, "refused"),
        unavailable(),
    ]
    client.close_watches()
    await client.until(lambda: len(client.watch_calls) == 5 and client.open_watches() == 1)
    assert [c["resourceVersion"] for c in client.watch_calls[1:]] == [seen] * 4
    assert running.reflector.lists == 1
    assert running.backoff.failures == 3


@pytest.mark.parametrize("how", ["error-event", "http-410"])
async def test_expired_watch_relists_from_the_last_version(
    running: Running, kube: KubeClient, how: str
) -> None:
    client, ns = running.client, running.namespace
    await kube.create(CONFIGMAPS, configmap("a"), ns)
    await client.until(lambda: running.key("a") in running.store.items)
    seen = running.last_event_version()
    if how == "error-event":
        client.expire_watches()
    else:
        client.watch_faults = [gone()]
        client.close_watches()
    await client.until(lambda: running.reflector.lists == 2 and client.open_watches() == 1)
    assert client.list_calls[1] == {"resourceVersion": seen}
    assert running.reflector.expirations == 1
    assert running.store.calls[-1][0] == "replace"
    await kube.create(CONFIGMAPS, configmap("b"), ns)
    await client.until(lambda: running.key("b") in running.store.items)
    assert await converged(running, kube)


async def test_expired_list_falls_back_to_a_paginated_quorum_list(
    kube: KubeClient, namespace: str
) -> None:
    for i in range(7):
        await kube.create(CONFIGMAPS, configmap(f"o{i}"), namespace)
    run, task = await start_reflector(kube, namespace, page_size=3)
    client = run.client
    try:
        await client.until(lambda: client.open_watches() == 1)
        await kube.create(CONFIGMAPS, configmap("late"), namespace)
        await client.until(lambda: run.key("late") in run.store.items)
        seen = run.reflector.last_sync_resource_version
        # Disconnected; o0 goes away meanwhile; the watch cannot resume and listing
        # from our version is refused too.
        client.hold_watches()
        client.cut_watches()
        await client.until(lambda: client.held_watches() == 1)
        await kube.delete(CONFIGMAPS, "o0", namespace)
        client.watch_faults = [gone()]
        client.list_faults = [gone()]
        client.release_watches()
        await client.until(lambda: run.reflector.lists == 2 and client.open_watches() == 1)
        assert client.list_calls[1] == {"resourceVersion": seen}  # refused with 410
        pages = client.list_calls[2:]
        assert [p["resourceVersion"] for p in pages] == ["", "", ""]  # 7 objects, 3 a page
        assert [p["limit"] for p in pages] == [3, 3, 3]
        assert "continue" not in pages[0]
        assert all(p["continue"] for p in pages[1:])
        assert run.key("o0") not in run.store.items
        assert run.store.versions() == await server_versions(kube, namespace)
        # The next relist asks from the last version again, not with a quorum read.
        # Compared with the version held before the relist: the relist's own answer
        # may carry a newer one (resource versions are global; other writers move them).
        held = run.reflector.last_sync_resource_version
        client.expire_watches()
        await client.until(lambda: run.reflector.lists == 3)
        # (A bookmark may have advanced the version past the last stored change.)
        relist_from = client.list_calls[-1]["resourceVersion"]
        assert relist_from != ""
        assert int(relist_from) >= int(held), (relist_from, held)
    finally:
        await stop(task)


async def test_selectors_go_to_the_list_and_the_watch(kube: KubeClient, namespace: str) -> None:
    await kube.create(CONFIGMAPS, configmap("y", labels={"app": "x"}), namespace)
    await kube.create(CONFIGMAPS, configmap("z", labels={"app": "x"}), namespace)
    await kube.create(CONFIGMAPS, configmap("y2"), namespace)
    run, task = await start_reflector(
        kube, namespace, label_selector="app=x", field_selector="metadata.name=y"
    )
    try:
        await run.client.until(lambda: run.client.open_watches() == 1)
        for call in (run.client.list_calls[0], run.client.watch_calls[0]):
            assert call["labelSelector"] == "app=x"
            assert call["fieldSelector"] == "metadata.name=y"
        await run.client.until(lambda: run.key("y") in run.store.items)
        await kube.patch(CONFIGMAPS, "y", {"data": {"v": "1"}}, namespace)
        await kube.patch(CONFIGMAPS, "z", {"data": {"v": "1"}}, namespace)
        await run.client.until(lambda: run.store.items[run.key("y")].get("data") == {"v": "1"})
        assert list(run.store.items) == [run.key("y")]
    finally:
        await stop(task)


async def test_list_errors_back_off_until_the_server_answers(
    kube: KubeClient, namespace: str
) -> None:
    await kube.create(CONFIGMAPS, configmap("a"), namespace)
    run, task = await start_reflector(kube, namespace)
    run.client.list_faults = [
        ApiError(500, {"code": 500, "message": "etcd down"}),
        ConnectionResetError(),
        TimeoutError(),
        too_many_requests(),
    ]
    try:
        await run.client.until(lambda: run.client.open_watches() == 1)
        assert len(run.client.list_calls) == 5
        assert run.backoff.failures == 4
        await run.client.until(lambda: run.key("a") in run.store.items)
        assert run.store.versions() == await server_versions(kube, namespace)
    finally:
        await stop(task)


async def test_silent_watch_is_abandoned_after_its_timeout(
    kube: KubeClient, namespace: str
) -> None:
    """A half-open connection never ends by itself: give up shortly after timeoutSeconds."""
    run, task = await start_reflector(
        kube,
        namespace,
        min_watch_timeout_s=0.5,  # timeoutSeconds=1
        watch_deadline_margin_s=0.2,
    )
    client = run.client
    client.stall_new_watches = True
    try:
        await client.until(lambda: client.open_watches() == 1)
        assert client.watch_calls[0]["timeoutSeconds"] == 1
        client.stall_new_watches = False
        await client.until(lambda: len(client.watch_calls) == 2 and client.open_watches() == 1)
        assert client.watch_calls[1]["resourceVersion"] == client.watch_calls[0]["resourceVersion"]
        assert run.reflector.lists == 1
        # The watch that replaced it works.
        await kube.create(CONFIGMAPS, configmap("a"), namespace)
        await client.until(lambda: run.key("a") in run.store.items)
    finally:
        await stop(task)


async def test_silent_watch_is_abandoned_after_its_idle_bound(
    kube: KubeClient, namespace: str
) -> None:
    """The server sends a bookmark at least every minute: a watch silent for longer than
    the idle bound hangs on a dead connection and is re-watched long before timeoutSeconds."""
    run, task = await start_reflector(kube, namespace, watch_idle_s=2.0)
    client = run.client
    client.stall_new_watches = True
    try:
        await client.until(lambda: client.open_watches() == 1)
        assert int(client.watch_calls[0]["timeoutSeconds"]) >= 300
        client.stall_new_watches = False
        await client.until(
            lambda: len(client.watch_calls) >= 2 and client.open_watches() == 1, within=10
        )
        assert run.reflector.abandoned_watches >= 1
        assert {c["resourceVersion"] for c in client.watch_calls} == {
            client.watch_calls[0]["resourceVersion"]
        }
        await kube.create(CONFIGMAPS, configmap("a"), namespace)
        await client.until(lambda: run.key("a") in run.store.items)
        assert run.reflector.lists == 1
        assert run.backoff.failures == 0
    finally:
        await stop(task)


async def test_held_watch_request_is_given_up_and_retried(kube: KubeClient, namespace: str) -> None:
    """A watch request that never gets an answer does not hold the reflector until
    timeoutSeconds: it is retried after the idle bound, and works once the network does."""
    run, task = await start_reflector(kube, namespace, watch_idle_s=1.5)
    client = run.client
    try:
        await client.until(lambda: client.open_watches() == 1)
        client.hold_watches()
        client.cut_watches()
        await client.until(lambda: client.held_watches() == 1)
        calls, failures = len(client.watch_calls), run.backoff.failures
        await client.until(
            lambda: len(client.watch_calls) > calls and client.held_watches() == 1, within=10
        )
        assert run.reflector.abandoned_watches >= 1
        await kube.create(CONFIGMAPS, configmap("a"), namespace)
        client.release_watches()
        await client.until(lambda: run.key("a") in run.store.items)
        assert run.reflector.lists == 1
        assert run.backoff.failures == failures  # giving up a held request is no failure
    finally:
        await stop(task)


# SharedIndexInformer and InformerFactory.


@dataclass
class Informing:
    """An informer on the namespace's ConfigMaps, through a FaultyClient."""

    client: FaultyClient
    informer: SharedIndexInformer
    namespace: str

    def key(self, name: str) -> str:
        return f"{self.namespace}/{name}"


async def synced(informer: SharedIndexInformer, within: float = 20.0) -> None:
    """Wait (bounded) for an informer's first list to be in its cache."""
    await bounded(
        informer.wait_for_sync(),
        within=within,
        what=f"{informer.reflector.describe()}: the first list",
        state=lambda: (
            f"reflector: {informer.reflector.lists} lists, {informer.reflector.watches} watches"
        ),
    )


def fast_informer(client: FaultyClient, namespace: str, **kwargs: Any) -> SharedIndexInformer:
    informer = SharedIndexInformer(client, CONFIGMAPS, namespace=namespace, **kwargs)
    informer.reflector.backoff = RecordingBackoff()
    return informer


@pytest.fixture
async def informing(kube: KubeClient, namespace: str) -> AsyncIterator[Informing]:
    """Objects a (v=1) and b (v=1) exist and the watch cache has seen them, so the first
    list (resourceVersion=0, from that cache) holds both."""
    await kube.create(CONFIGMAPS, configmap("a", v="1"), namespace)
    b = await kube.create(CONFIGMAPS, configmap("b", v="1"), namespace)
    await watch_cache_reached(kube, namespace, resource_version(b))
    client = FaultyClient(kube)
    informer = fast_informer(client, namespace)
    yield Informing(client, informer, namespace)
    await informer.stop()


async def test_initial_list_then_watch_events_in_order(
    informing: Informing, kube: KubeClient
) -> None:
    informer, ns = informing.informer, informing.namespace
    rec = Recorder()
    informer.add_event_handler(rec)
    assert not informer.has_synced()
    await informer.start()
    await synced(informer)
    assert informer.has_synced()
    await rec.wait_for(lambda: len(rec.events) == 2)
    assert rec.events == [
        ("add", informing.key("a"), True),
        ("add", informing.key("b"), True),
    ]
    await kube.patch(CONFIGMAPS, "a", {"data": {"v": "2"}}, ns)
    await kube.create(CONFIGMAPS, configmap("c"), ns)
    await kube.delete(CONFIGMAPS, "b", ns)
    await rec.wait_for(lambda: len(rec.events) == 5)
    assert [(kind, key) for kind, key, _ in rec.events[2:]] == [
        ("update", informing.key("a")),
        ("add", informing.key("c")),
        ("delete", informing.key("b")),
    ]
    old, new = rec.events[2][2]
    assert (old["data"], new["data"]) == ({"v": "1"}, {"v": "2"})
    assert rec.events[3][2] is False  # not from the initial list
    assert sorted(informer.indexer.keys()) == [informing.key("a"), informing.key("c")]
    assert informer.indexer.by_index(NAMESPACE_INDEX, ns)[0]["data"] == {"v": "2"}


async def test_slow_handler_does_not_block_others(informing: Informing, kube: KubeClient) -> None:
    informer = informing.informer
    release = asyncio.Event()
    slow_seen: list[str] = []
    slow_done = asyncio.Event()

    async def slow_add(obj: JSON, initial: bool) -> None:
        await release.wait()
        slow_seen.append(obj["metadata"]["name"])
        if len(slow_seen) == 22:
            slow_done.set()

    informer.add_event_handler(FuncHandler(add=slow_add), name="slow")
    fast = Recorder()
    informer.add_event_handler(fast, name="fast")
    await informer.start()
    await synced(informer)
    for i in range(20):
        await kube.create(CONFIGMAPS, configmap(f"n{i:02}"), informing.namespace)
    await fast.wait_for(lambda: len(fast.events) == 22)
    assert slow_seen == []
    release.set()
    await bounded(slow_done.wait(), within=20, what="the slow handler to get all 22 adds")
    assert slow_seen == ["a", "b"] + [f"n{i:02}" for i in range(20)]  # order kept


async def test_failing_handler_keeps_receiving(informing: Informing, kube: KubeClient) -> None:
    seen: list[str] = []
    third = asyncio.Event()

    def flaky(obj: JSON, initial: bool) -> None:
        seen.append(obj["metadata"]["name"])
        if len(seen) == 3:
            third.set()
        raise RuntimeError("handler bug")

    informing.informer.add_event_handler(FuncHandler(add=flaky))
    await informing.informer.start()
    await synced(informing.informer)
    await kube.create(CONFIGMAPS, configmap("c"), informing.namespace)
    await bounded(third.wait(), within=20, what="the failing handler to get a third add")
    assert seen == ["a", "b", "c"]


async def test_late_handler_gets_synthetic_adds_then_live_events(
    informing: Informing, kube: KubeClient
) -> None:
    informer = informing.informer
    await informer.start()
    await synced(informer)
    late = Recorder()
    registration = informer.add_event_handler(late)
    await kube.create(CONFIGMAPS, configmap("c"), informing.namespace)
    await bounded(registration.wait_for_sync(), within=20, what="the handler's initial list")
    assert registration.has_synced()
    await late.wait_for(lambda: len(late.events) == 3)
    assert late.events == [
        ("add", informing.key("a"), True),
        ("add", informing.key("b"), True),
        ("add", informing.key("c"), False),
    ]


async def test_handler_registration_syncs_only_after_its_initial_list_is_handled(
    informing: Informing,
) -> None:
    informer = informing.informer
    gate = asyncio.Event()

    async def gated(obj: JSON, initial: bool) -> None:
        await gate.wait()

    registration = informer.add_event_handler(FuncHandler(add=gated))
    await informer.start()
    await synced(informer)
    assert informer.has_synced()
    assert not registration.has_synced()
    gate.set()
    await bounded(registration.wait_for_sync(), within=20, what="the handler's initial list")
    assert registration.has_synced()


async def test_removed_handler_gets_nothing_more(informing: Informing, kube: KubeClient) -> None:
    informer = informing.informer
    rec = Recorder()
    registration = informer.add_event_handler(rec)
    keep = Recorder()
    informer.add_event_handler(keep)
    await informer.start()
    await rec.wait_for(lambda: len(rec.events) == 2)
    await informer.remove_event_handler(registration)
    await kube.create(CONFIGMAPS, configmap("c"), informing.namespace)
    await keep.wait_for(lambda: len(keep.events) == 3)
    assert len(rec.events) == 2


async def test_resync_redelivers_cached_objects_as_updates(
    kube: KubeClient, namespace: str
) -> None:
    await kube.create(CONFIGMAPS, configmap("a"), namespace)
    client = FaultyClient(kube)
    informer = fast_informer(client, namespace, resync_period=0.05)
    rec = Recorder()
    informer.add_event_handler(rec)
    await informer.start()
    try:
        await rec.wait_for(lambda: len([e for e in rec.events if e[0] == "update"]) >= 2)
        updates = [detail for kind, _, detail in rec.events if kind == "update"]
        assert all(old is new for old, new in updates)
        assert client.list_calls == [{"resourceVersion": "0"}]  # from the cache, not the server
    finally:
        await informer.stop()


async def test_relist_after_expiry_delivers_tombstones_and_changes(
    informing: Informing, kube: KubeClient
) -> None:
    client, informer, ns = informing.client, informing.informer, informing.namespace
    rec = Recorder()
    informer.add_event_handler(rec)
    await informer.start()
    await rec.wait_for(lambda: len(rec.events) == 2)
    await client.until(lambda: client.open_watches() == 1)
    # Disconnected while things change; when it comes back, its version has expired.
    client.hold_watches()
    client.cut_watches(ConnectionResetError(104, "Connection reset by peer"))
    await client.until(lambda: client.held_watches() == 1)
    await kube.delete(CONFIGMAPS, "a", ns)
    await kube.patch(CONFIGMAPS, "b", {"data": {"v": "9"}}, ns)
    await kube.create(CONFIGMAPS, configmap("c"), ns)
    client.watch_faults = [gone()]
    client.release_watches()
    await rec.wait_for(lambda: len(rec.events) == 5)
    assert informer.reflector.lists == 2
    tail = sorted((kind, key) for kind, key, _ in rec.events[2:])
    assert tail == [
        ("add", informing.key("c")),
        ("tombstone", informing.key("a")),
        ("update", informing.key("b")),
    ]
    tomb = next(detail for kind, _, detail in rec.events if kind == "tombstone")
    assert isinstance(tomb, DeletedFinalStateUnknown)
    assert tomb.obj["data"] == {"v": "1"}  # the last state we knew
    add_c = next(detail for kind, key, detail in rec.events if key == informing.key("c"))
    assert add_c is False  # a relist's adds are not the initial list
    cache = {object_key(o): resource_version(o) for o in informer.indexer.list()}
    assert cache == await server_versions(kube, ns)


async def test_custom_indexers_and_stop_then_start_resumes_the_watch(
    kube: KubeClient, namespace: str
) -> None:
    await kube.create(CONFIGMAPS, configmap("a", v="1"), namespace)
    b = await kube.create(CONFIGMAPS, configmap("b", v="1"), namespace)
    await watch_cache_reached(kube, namespace, resource_version(b))
    client = FaultyClient(kube)
    informer = fast_informer(
        client,
        namespace,
        indexers={"by-value": lambda o: [str(v) for v in (o.get("data") or {}).values()]},
    )
    rec = Recorder()
    informer.add_event_handler(rec)
    await informer.start()
    try:
        await synced(informer)
        names = sorted(o["metadata"]["name"] for o in informer.indexer.by_index("by-value", "1"))
        assert names == ["a", "b"]
        await informer.stop()
        assert client.open_watches() == 0
        await kube.patch(CONFIGMAPS, "a", {"data": {"v": "2"}}, namespace)
        await informer.start()
        await rec.wait_for(lambda: any(kind == "update" for kind, _, _ in rec.events))
        assert informer.indexer.index_keys("by-value", "2") == [f"{namespace}/a"]
        assert client.list_calls == [{"resourceVersion": "0"}]  # resumed, no relist
    finally:
        await informer.stop()


async def test_factory_shares_one_informer_per_watch(kube: KubeClient, namespace: str) -> None:
    await kube.create(CONFIGMAPS, configmap("a"), namespace)
    b = await kube.create(CONFIGMAPS, configmap("b"), namespace)
    await watch_cache_reached(kube, namespace, resource_version(b))
    factory = InformerFactory(kube)
    first = factory.informer_for(CONFIGMAPS, namespace=namespace)
    assert factory.informer_for(CONFIGMAPS, namespace=namespace) is first
    assert factory.informer_for(CONFIGMAPS, namespace=namespace, label_selector="") is first
    other = factory.informer_for(CONFIGMAPS, namespace=namespace, label_selector="app=x")
    assert other is not first
    assert factory.informer_for(PODS, namespace=namespace) is not first
    await factory.start()
    await factory.start()  # idempotent
    try:
        await bounded(factory.wait_for_cache_sync(), within=20, what="every informer's first list")
        assert all(i.has_synced() for i in factory.informers())
        assert sorted(first.indexer.keys()) == [f"{namespace}/a", f"{namespace}/b"]
        assert len(other.indexer) == 0  # nothing labelled app=x
        late = factory.informer_for(
            CONFIGMAPS, namespace=namespace, field_selector="metadata.name=a"
        )
        assert not late.has_synced()
        await factory.start()
        await bounded(factory.wait_for_cache_sync(), within=20, what="every informer's first list")
        assert late.has_synced()
        assert late.indexer.keys() == [f"{namespace}/a"]
    finally:
        await factory.stop()


# Property: whatever the network does, handlers end up seeing the server's truth.

NAMES = ["a", "b", "c", "d"]
FAULTS = [
    "cut",  # a watch stream breaks mid-way (incomplete payload)
    "reset",  # ... or the connection is reset
    "close",  # the watch ends cleanly
    "expire",  # the watch gets a 410 ERROR event
    "gone-watch",  # the stream breaks, and the next watch is answered 410
    "fail-list",  # the next list from a version is answered 410: quorum relist
    "throttle",  # the next watch start is answered 429
    "hold",  # the stream breaks, and no watch gets through until "release" or "settle"
    "release",
    "settle",  # the network heals (a hold ends) and the handler catches up
]
Step = tuple[str, str | None]

steps_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(NAMES)),
        st.tuples(st.just("write"), st.sampled_from(NAMES)),
        st.tuples(st.just("write"), st.sampled_from(NAMES)),
        st.tuples(st.sampled_from(FAULTS), st.none()),
    ),
    max_size=30,
)


# Bounds of one example against the real server. A typical example takes well under a
# second; a convergence that has not happened after CONVERGE_S never will (every injected
# fault is retried within milliseconds by the test's fast backoff); EXAMPLE_S bounds the
# whole sequence, so a stuck example fails in seconds with its step and the reflector's
# state, and the Hypothesis deadline is only a backstop beyond that.
CONVERGE_S = 15.0
EXAMPLE_S = 30.0


@dataclass
class Outcome:
    mirror: StrictMirror
    client: FaultyClient
    lists: int


async def scenario(kubeconfig: str, namespace: str, steps: list[Step]) -> Outcome:
    """Random writes and faults on one informer; returns once it has converged."""
    example = uuid.uuid4().hex[:8]
    selector = f"example={example}"
    kube = await KubeClient.load(kubeconfig)
    client = FaultyClient(kube)
    informer = fast_informer(client, namespace, label_selector=selector)
    mirror = StrictMirror()
    informer.add_event_handler(mirror)
    await informer.start()
    live: set[str] = set()
    at = "start"

    def state() -> str:
        return f"{client.describe()}; handler problems: {mirror.problems}"

    async def settle() -> dict[str, str]:
        # A partition does not outlast a settle: without a watch nothing can catch up.
        client.release_watches()
        return await converge(
            mirror.versions,
            mirror.changed,
            kube,
            namespace,
            label_selector=selector,
            within=CONVERGE_S,
            state=state,
        )

    try:
        async with asyncio.timeout(EXAMPLE_S):
            for counter, (action, name) in enumerate(steps, 1):
                at = f"{counter} {(action, name)}"
                if action == "write":
                    assert name is not None
                    obj = f"{example}-{name}"
                    if name not in live:
                        body = configmap(obj, labels={"example": example}, v=str(counter))
                        await kube.create(CONFIGMAPS, body, namespace)
                        live.add(name)
                    elif counter % 3:
                        await kube.patch(CONFIGMAPS, obj, {"data": {"v": str(counter)}}, namespace)
                    else:
                        await kube.delete(CONFIGMAPS, obj, namespace)
                        live.discard(name)
                elif action == "cut":
                    client.cut_watches()
                elif action == "reset":
                    client.cut_watches(ConnectionResetError(104, "Connection reset by peer"))
                elif action == "close":
                    client.close_watches()
                elif action == "expire":
                    client.expire_watches()
                elif action == "gone-watch":
                    client.watch_faults.append(gone())
                    client.cut_watches()
                elif action == "fail-list":
                    client.list_faults.append(gone())
                elif action == "throttle":
                    client.watch_faults.append(too_many_requests())
                elif action == "hold":
                    client.hold_watches()
                    client.cut_watches()
                elif action == "release":
                    client.release_watches()
                elif action == "settle":
                    await settle()
            at = "the final settle"
            truth = await settle()
        cache = {object_key(o): resource_version(o) for o in informer.indexer.list()}
        assert cache == truth
    except TimeoutError:
        raise AssertionError(
            f"example not done within {EXAMPLE_S:g} s, at step {at}: {state()}"
        ) from None
    finally:
        await informer.stop()
        await kube.close()
    return Outcome(mirror, client, informer.reflector.lists)


@settings(
    max_examples=30,
    # Each example is bounded by EXAMPLE_S itself, with a message; this is the backstop.
    deadline=timedelta(seconds=EXAMPLE_S + 10),
    # No shrinking: every shrink step replays against the real server, and a stuck
    # example would cost a bound each time (minutes in all). The failing example is
    # reported whole, with the step it stopped at, and replayed first on the next run.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# A hold that a settle must end (a settle under a hold once waited for ever).
@example(steps=[("hold", None), ("write", "a"), ("write", "d"), ("settle", None)])
@given(steps=steps_strategy)
def test_notifications_rebuild_the_server_state(
    control_plane: ControlPlane, namespace: str, steps: list[Step]
) -> None:
    outcome = uvloop.run(scenario(str(control_plane.kubeconfig), namespace, steps))
    assert outcome.mirror.problems == []


async def test_scenario_with_deletes_missed_while_disconnected_uses_tombstones(
    control_plane: ControlPlane, namespace: str
) -> None:
    """The property's machinery, on a sequence known to need tombstones and a quorum list."""
    steps: list[Step] = [
        ("write", "a"),  # 1: create a
        ("write", "b"),  # 2: create b
        ("settle", None),
        ("hold", None),  # disconnected from here ...
        ("write", "c"),  # 5: create c
        ("write", "a"),  # 6: delete a, unseen
        ("write", "b"),  # 7: update b
        ("gone-watch", None),  # ... and the version has expired
        ("fail-list", None),  # ... and listing from it is refused
        ("release", None),
    ]
    outcome = await scenario(str(control_plane.kubeconfig), namespace, steps)
    assert outcome.mirror.problems == []
    assert outcome.mirror.tombstones == 1
    assert outcome.lists == 2
    assert outcome.client.list_calls[-1] == {
        "labelSelector": outcome.client.list_calls[0]["labelSelector"],
        "resourceVersion": "",
        "limit": 500,
    }


# Faults only a control plane of our own may suffer: etcd compaction.


@pytest.fixture(scope="module")
def private_plane() -> Iterator[ControlPlane]:
    with ControlPlane(controllers=False) as cp:
        yield cp


@pytest.fixture
async def private_kube(private_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = await KubeClient.load(str(private_plane.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


async def test_quorum_list_restarts_unpaginated_when_compaction_expires_its_continue_token(
    private_plane: ControlPlane, private_kube: KubeClient
) -> None:
    kube = private_kube
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    for i in range(5):
        await kube.create(CONFIGMAPS, configmap(f"o{i}"), namespace)
    compacted = False

    async def compact_before_second_page(params: dict[str, str | int | bool]) -> None:
        nonlocal compacted
        if params.get("continue") and not compacted:
            compacted = True
            # A write moves etcd past the token's revision and compaction removes that
            # revision. The API server would still serve the page from its watch cache's
            # snapshot; a restarted one has none, so the token has expired.
            await kube.create(CONFIGMAPS, configmap("written-between-pages"), namespace)
            await asyncio.to_thread(private_plane.compact_etcd)
            await asyncio.to_thread(private_plane.restart_apiserver)
            await kube.close()  # the next page goes over a fresh connection

    run, task = await start_reflector(kube, namespace, page_size=2)
    run.client.list_faults = [gone()]  # the first list is refused: quorum list, paginated
    run.client.before_list = compact_before_second_page
    try:
        await run.client.until(lambda: run.client.open_watches() == 1)
        calls = run.client.list_calls
        assert calls[0] == {"resourceVersion": "0"}
        assert calls[1] == {"resourceVersion": "", "limit": 2}
        assert calls[2]["continue"]
        assert calls[3:] == [{"resourceVersion": ""}]  # the token expired: start over, whole
        assert run.reflector.lists == 1
        assert run.store.versions() == await server_versions(kube, namespace)
        assert run.key("written-between-pages") in run.store.items
    finally:
        await stop(task)
