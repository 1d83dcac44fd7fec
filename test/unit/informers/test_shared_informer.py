"""SharedIndexInformer and InformerFactory against an in-memory API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from informers_fake_api import FakeApi
from informers_recorder import Recorder, wait_until

from aviator.informers import (
    NAMESPACE_INDEX,
    Backoff,
    DeletedFinalStateUnknown,
    FuncHandler,
    InformerFactory,
    SharedIndexInformer,
)
from aviator.kube.resources import CONFIGMAPS, PODS

JSON = dict[str, Any]


def make_informer(api: FakeApi, **kwargs: Any) -> SharedIndexInformer:
    informer = SharedIndexInformer(api, CONFIGMAPS, **kwargs)
    informer.reflector.backoff = Backoff(initial_s=0.001, max_s=0.01)
    return informer


@pytest.fixture
async def api() -> FakeApi:
    api = FakeApi()
    api.create("a", v="1")
    api.create("b", v="1")
    return api


@pytest.fixture
async def informer(api: FakeApi) -> AsyncIterator[SharedIndexInformer]:
    informer = make_informer(api)
    yield informer
    await informer.stop()


async def test_initial_list_then_watch_events_in_order(
    api: FakeApi, informer: SharedIndexInformer
) -> None:
    rec = Recorder()
    informer.add_event_handler(rec)
    assert not informer.has_synced()
    await informer.start()
    await informer.wait_for_sync()
    assert informer.has_synced()
    await rec.wait_for(lambda: len(rec.events) == 2)
    assert [(k, key, init) for k, key, init in rec.events] == [
        ("add", "default/a", True),
        ("add", "default/b", True),
    ]
    await wait_until(lambda: api.open_watches() == 1)
    api.update("a", v="2")
    api.create("c")
    api.delete("b")
    await rec.wait_for(lambda: len(rec.events) == 5)
    assert [(k, key) for k, key, _ in rec.events[2:]] == [
        ("update", "default/a"),
        ("add", "default/c"),
        ("delete", "default/b"),
    ]
    old, new = rec.events[2][2]
    assert (old["data"], new["data"]) == ({"v": "1"}, {"v": "2"})
    assert rec.events[3][2] is False  # not from the initial list
    assert sorted(informer.indexer.keys()) == ["default/a", "default/c"]
    assert informer.indexer.by_index(NAMESPACE_INDEX, "default")[0]["data"] == {"v": "2"}


async def test_slow_handler_does_not_block_others(
    api: FakeApi, informer: SharedIndexInformer
) -> None:
    release = asyncio.Event()
    slow_seen: list[str] = []

    async def slow_add(obj: JSON, initial: bool) -> None:
        await release.wait()
        slow_seen.append(obj["metadata"]["name"])

    informer.add_event_handler(FuncHandler(add=slow_add), name="slow")
    fast = Recorder()
    informer.add_event_handler(fast, name="fast")
    await informer.start()
    await wait_until(lambda: api.open_watches() == 1)
    for i in range(20):
        api.create(f"n{i}")
    await fast.wait_for(lambda: len(fast.events) == 22)
    assert slow_seen == []
    release.set()
    await wait_until(lambda: len(slow_seen) == 22)
    assert slow_seen == ["a", "b"] + [f"n{i}" for i in range(20)]  # order kept


async def test_failing_handler_keeps_receiving(api: FakeApi, informer: SharedIndexInformer) -> None:
    seen: list[str] = []

    def flaky(obj: JSON, initial: bool) -> None:
        seen.append(obj["metadata"]["name"])
        raise RuntimeError("handler bug")

    informer.add_event_handler(FuncHandler(add=flaky))
    await informer.start()
    await wait_until(lambda: api.open_watches() == 1)
    api.create("c")
    await wait_until(lambda: seen == ["a", "b", "c"])


async def test_late_handler_gets_synthetic_adds_then_live_events(
    api: FakeApi, informer: SharedIndexInformer
) -> None:
    await informer.start()
    await informer.wait_for_sync()
    await wait_until(lambda: api.open_watches() == 1)
    late = Recorder()
    registration = informer.add_event_handler(late)
    api.create("c")
    await registration.wait_for_sync()
    assert registration.has_synced()
    await late.wait_for(lambda: len(late.events) == 3)
    assert [(k, key, flag) for k, key, flag in late.events] == [
        ("add", "default/a", True),
        ("add", "default/b", True),
        ("add", "default/c", False),
    ]


async def test_handler_registration_syncs_only_after_initial_list_handled(
    api: FakeApi, informer: SharedIndexInformer
) -> None:
    gate = asyncio.Event()

    async def gated(obj: JSON, initial: bool) -> None:
        await gate.wait()

    registration = informer.add_event_handler(FuncHandler(add=gated))
    await informer.start()
    await informer.wait_for_sync()
    assert not registration.has_synced()
    gate.set()
    await registration.wait_for_sync()
    assert registration.has_synced()


async def test_removed_handler_gets_nothing_more(
    api: FakeApi, informer: SharedIndexInformer
) -> None:
    rec = Recorder()
    registration = informer.add_event_handler(rec)
    keep = Recorder()
    informer.add_event_handler(keep)
    await informer.start()
    await rec.wait_for(lambda: len(rec.events) == 2)
    await informer.remove_event_handler(registration)
    await wait_until(lambda: api.open_watches() == 1)
    api.create("c")
    await keep.wait_for(lambda: len(keep.events) == 3)
    assert len(rec.events) == 2


async def test_resync_redelivers_cached_objects_as_updates(api: FakeApi) -> None:
    informer = make_informer(api, resync_period=0.05)
    rec = Recorder()
    informer.add_event_handler(rec)
    await informer.start()
    try:
        await rec.wait_for(lambda: len([e for e in rec.events if e[0] == "update"]) >= 2)
        _kind, _key, (old, new) = next(e for e in rec.events if e[0] == "update")
        assert old is new
    finally:
        await informer.stop()


async def test_relist_after_expiry_emits_tombstones_and_changes(
    api: FakeApi, informer: SharedIndexInformer
) -> None:
    rec = Recorder()
    informer.add_event_handler(rec)
    await informer.start()
    await wait_until(lambda: api.open_watches() == 1)
    await rec.wait_for(lambda: len(rec.events) == 2)
    # Disconnect, let things happen and history be compacted, then come back.
    api.watch_faults = [ConnectionResetError()] * 2
    api.break_watches()
    await wait_until(lambda: len(api.watch_calls) >= 2)
    api.delete("a")
    api.update("b", v="9")
    api.create("c")
    api.compact()
    await wait_until(lambda: api.open_watches() == 1 and len(api.list_calls) == 2)
    await rec.wait_for(lambda: len(rec.events) == 5)
    tail = sorted((k, key) for k, key, _ in rec.events[2:])
    assert tail == [("add", "default/c"), ("tombstone", "default/a"), ("update", "default/b")]
    tomb = next(detail for k, _, detail in rec.events if k == "tombstone")
    assert isinstance(tomb, DeletedFinalStateUnknown)
    assert tomb.obj["data"] == {"v": "1"}  # the last state we knew
    assert {
        k: o["data"] for k, o in zip(informer.indexer.keys(), informer.indexer.list(), strict=True)
    } == {k: o["data"] for k, o in api.objects.items()}
    add_c = next(detail for k, key, detail in rec.events if key == "default/c")
    assert add_c is False  # a relist's adds are not the initial list


async def test_custom_indexers_and_stop_restart(api: FakeApi) -> None:
    informer = make_informer(
        api, indexers={"by-value": lambda o: [str(v) for v in (o.get("data") or {}).values()]}
    )
    await informer.start()
    await informer.wait_for_sync()
    assert sorted(o["metadata"]["name"] for o in informer.indexer.by_index("by-value", "1")) == [
        "a",
        "b",
    ]
    await informer.stop()
    assert api.open_watches() == 0
    api.update("a", v="2")
    await informer.start()
    await wait_until(lambda: informer.indexer.index_keys("by-value", "2") == ["default/a"])
    assert len(api.list_calls) == 1  # resumed the watch from its last version, no relist
    await informer.stop()


async def test_factory_shares_one_informer_per_watch(api: FakeApi) -> None:
    factory = InformerFactory(api)
    first = factory.informer_for(CONFIGMAPS)
    assert factory.informer_for(CONFIGMAPS) is first
    assert factory.informer_for(CONFIGMAPS, namespace="", label_selector="") is first
    other = factory.informer_for(CONFIGMAPS, label_selector="app=x")
    assert other is not first
    assert factory.informer_for(PODS) is not first
    for inf in factory.informers():
        inf.reflector.backoff = Backoff(initial_s=0.001, max_s=0.01)
    await factory.start()
    await factory.start()  # idempotent
    try:
        await asyncio.wait_for(factory.wait_for_cache_sync(), 5)
        assert all(i.has_synced() for i in factory.informers())
        assert len(first.indexer) == 2
        assert len(other.indexer) == 0  # nothing labelled app=x
        late = factory.informer_for(CONFIGMAPS, namespace="default")
        assert not late.has_synced()
        await factory.start()
        await asyncio.wait_for(factory.wait_for_cache_sync(), 5)
        assert late.has_synced()
    finally:
        await factory.stop()
