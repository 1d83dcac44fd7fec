"""Reflector list/watch protocol against an in-memory API server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from informers_fake_api import FakeApi, gone
from informers_recorder import wait_until

from aviator.informers import Backoff, Reflector, object_key
from aviator.kube.client import ApiError
from aviator.kube.resources import CONFIGMAPS

JSON = dict[str, Any]


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


def fast_backoff() -> Backoff:
    return Backoff(initial_s=0.001, max_s=0.01)


@pytest.fixture
async def running() -> AsyncIterator[tuple[FakeApi, ListStore, Reflector]]:
    api = FakeApi()
    api.create("pre")
    store = ListStore()
    reflector = Reflector(api, CONFIGMAPS, store, namespace="default", backoff=fast_backoff())
    task = asyncio.create_task(reflector.run())
    await wait_until(lambda: api.open_watches() == 1)
    yield api, store, reflector
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def server_view(api: FakeApi) -> dict[str, dict[str, str]]:
    return {k: o["data"] for k, o in api.objects.items()}


def cache_view(store: ListStore) -> dict[str, dict[str, str]]:
    return {k: o["data"] for k, o in store.items.items()}


async def test_first_list_from_cache_then_watch_from_list_version(
    running: tuple[FakeApi, ListStore, Reflector],
) -> None:
    api, store, _reflector = running
    assert api.list_calls == [{"resourceVersion": "0"}]  # no limit: served from cache
    watch = api.watch_calls[0]
    assert watch["resourceVersion"] == "101"
    assert watch["allowWatchBookmarks"] is True
    assert 300 <= int(watch["timeoutSeconds"]) <= 600
    assert store.calls == [("replace", "101")]
    assert store.items["default/pre"]["kind"] == "ConfigMap"  # list items made alike
    assert store.items["default/pre"]["apiVersion"] == "v1"


async def test_events_and_bookmarks_advance_version(
    running: tuple[FakeApi, ListStore, Reflector],
) -> None:
    api, store, reflector = running
    api.create("a", k="1")
    api.update("a", k="2")
    api.delete("pre")
    await wait_until(lambda: len(store.calls) == 4)
    assert store.calls[1:] == [
        ("add", "default/a"),
        ("update", "default/a"),
        ("delete", "default/pre"),
    ]
    assert reflector.last_sync_resource_version == "104"
    api.bookmark()
    await wait_until(lambda: reflector.last_sync_resource_version == "105")
    assert cache_view(store) == server_view(api)


async def test_clean_close_rewatches_from_last_version_without_relist(
    running: tuple[FakeApi, ListStore, Reflector],
) -> None:
    api, store, _reflector = running
    api.create("a")
    await wait_until(lambda: "default/a" in store.items)
    api.close_watches()
    await wait_until(lambda: len(api.watch_calls) == 2 and api.open_watches() == 1)
    assert api.watch_calls[1]["resourceVersion"] == "102"
    api.create("b")
    await wait_until(lambda: "default/b" in store.items)
    assert len(api.list_calls) == 1


async def test_cut_connection_rewatches_without_relist(
    running: tuple[FakeApi, ListStore, Reflector],
) -> None:
    api, store, _reflector = running
    api.create("a")
    await wait_until(lambda: "default/a" in store.items)
    api.break_watches()
    api.create("b")  # happens while we reconnect: must not be lost
    await wait_until(lambda: "default/b" in store.items)
    assert len(api.list_calls) == 1
    assert api.watch_calls[-1]["resourceVersion"] == "102"


async def test_watch_start_errors_back_off_and_rewatch(
    running: tuple[FakeApi, ListStore, Reflector],
) -> None:
    api, _store, _reflector = running
    api.watch_faults = [
        ApiError(429, {"code": 429, "reason": "TooManyRequests", "message": "slow down"}),
        ConnectionRefusedError(111, "refused"),
        ApiError(503, {"code": 503, "message": "unavailable"}),
    ]
    api.close_watches()
    await wait_until(lambda: len(api.watch_calls) == 5 and api.open_watches() == 1)
    assert len(api.list_calls) == 1
    assert {c["resourceVersion"] for c in api.watch_calls} == {"101"}


async def test_expired_watch_relists_from_last_version(
    running: tuple[FakeApi, ListStore, Reflector],
) -> None:
    api, store, _reflector = running
    api.create("a")
    await wait_until(lambda: "default/a" in store.items)
    api.expire_watches()
    await wait_until(lambda: len(api.list_calls) == 2 and api.open_watches() == 1)
    assert api.list_calls[1] == {"resourceVersion": "102"}


async def test_expired_list_falls_back_to_paginated_quorum_list() -> None:
    api = FakeApi()
    for i in range(7):
        api.create(f"o{i}")
    store = ListStore()
    reflector = Reflector(api, CONFIGMAPS, store, page_size=3, backoff=fast_backoff())
    task = asyncio.create_task(reflector.run())
    try:
        await wait_until(lambda: api.open_watches() == 1)
        api.create("late")
        await wait_until(lambda: "default/late" in store.items)
        # The informer was away; history got compacted; now the watch expires.
        api.list_faults = [gone()]
        api.compact()
        api.delete("o0")
        api.expire_watches()
        await wait_until(lambda: len(api.list_calls) >= 5 and api.open_watches() == 1)
        assert api.list_calls[1] == {"resourceVersion": "109"}  # from the last version: 410
        assert api.list_calls[2:] == [
            {"resourceVersion": "", "limit": 3},
            {"resourceVersion": "", "limit": 3, "continue": "3"},
            {"resourceVersion": "", "limit": 3, "continue": "6"},
        ]
        assert cache_view(store) == server_view(api)
        # The next relist asks from the last version again.
        api.expire_watches()
        await wait_until(lambda: len(api.list_calls) == 6)
        assert api.list_calls[5] == {"resourceVersion": "109"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_selectors_are_passed_to_list_and_watch() -> None:
    api = FakeApi()
    store = ListStore()
    reflector = Reflector(
        api, CONFIGMAPS, store, label_selector="app=x", field_selector="metadata.name=y"
    )
    task = asyncio.create_task(reflector.run())
    try:
        await wait_until(lambda: api.open_watches() == 1)
        for call in (api.list_calls[0], api.watch_calls[0]):
            assert call["labelSelector"] == "app=x"
            assert call["fieldSelector"] == "metadata.name=y"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_list_errors_back_off_until_the_server_answers() -> None:
    api = FakeApi()
    api.create("a")
    api.list_faults = [
        ApiError(500, {"code": 500, "message": "etcd down"}),
        ConnectionResetError(),
        TimeoutError(),
    ]
    store = ListStore()
    reflector = Reflector(api, CONFIGMAPS, store, backoff=fast_backoff())
    task = asyncio.create_task(reflector.run())
    try:
        await wait_until(lambda: api.open_watches() == 1)
        assert len(api.list_calls) == 4
        assert cache_view(store) == server_view(api)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# Backoff (pure).


def test_backoff_doubles_caps_and_resets_after_healthy_stretch() -> None:
    b = Backoff()
    delays = [b.failure(float(t)) for t in range(8)]
    assert delays == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert b.failure(8.0 + 121.0) == 0.8  # two minutes without failure: start over


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0, 300, allow_nan=False), min_size=1, max_size=30),
    st.floats(0, 1),
    st.integers(0, 2**32),
)
def test_backoff_stays_within_bounds(gaps: list[float], jitter: float, seed: int) -> None:
    b = Backoff(jitter=jitter, rng=random.Random(seed))
    now = 0.0
    last: float | None = None
    base = 0.0  # the un-jittered delay the model expects
    for gap in gaps:
        now += gap
        base = 0.8 if last is None or now - last > 120.0 else min(base * 2, 30.0)
        last = now
        delay = b.failure(now)
        assert base <= delay <= min(base * (1 + jitter), 30.0) + 1e-9


async def test_silent_watch_is_abandoned_after_its_timeout() -> None:
    """A half-open connection never ends by itself: give up shortly after timeoutSeconds."""
    api = FakeApi()
    store = ListStore()
    reflector = Reflector(
        api,
        CONFIGMAPS,
        store,
        min_watch_timeout_s=0.5,  # timeoutSeconds=1
        watch_deadline_margin_s=0.05,
        backoff=fast_backoff(),
    )
    task = asyncio.create_task(reflector.run())
    try:
        await wait_until(lambda: api.open_watches() == 1)
        assert api.watch_calls[0]["timeoutSeconds"] == 1
        await wait_until(lambda: len(api.watch_calls) == 2 and api.open_watches() == 1, 3)
        assert len(api.list_calls) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
