"""ShardManager against an in-memory API with compare-and-set patches and caches that
lag behind it: no moment where two replicas may reconcile one policy, a release waits
for the reconcile in flight, a crashed member's policies move once its Lease expired (2 s)."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from aviator.informers import Indexer
from aviator.kube.client import ApiError
from aviator.kube.marks import ANNOTATION_SHARD
from aviator.sharding import ring
from aviator.sharding.claims import holder, marker_of
from aviator.sharding.shards import ShardManager

JSON = dict[str, Any]
NS = "ns"
KEYS = [f"{NS}/p{i}" for i in range(12)]


class FakeApi:
    """Policies with resourceVersions; each replica's cache sees writes `lag` s later."""

    def __init__(self) -> None:
        self.objects: dict[str, JSON] = {}
        self._rv = itertools.count(1)
        self.caches: list[tuple[Indexer, Callable[[JSON | None, JSON], None], float]] = []
        self.leases: dict[str, JSON] = {}  # what a read of a member Lease returns
        for key in KEYS:
            name = key.partition("/")[2]
            self.objects[key] = {
                "metadata": {"name": name, "namespace": NS, "resourceVersion": str(next(self._rv))}
            }

    def attach(
        self, cache: Indexer, deliver: Callable[[JSON | None, JSON], None], lag: float
    ) -> None:
        for obj in self.objects.values():
            cache.upsert(copy.deepcopy(obj))
            deliver(None, obj)
        self.caches.append((cache, deliver, lag))

    async def patch(self, _res: object, name: str, body: JSON, namespace: str) -> JSON:
        await asyncio.sleep(0.001)
        key = f"{namespace}/{name}"
        obj = self.objects[key]
        if body["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, None, "conflict")
        new = copy.deepcopy(obj)
        notes = new["metadata"].setdefault("annotations", {})
        marker = body["metadata"]["annotations"][ANNOTATION_SHARD]
        if marker is None:
            notes.pop(ANNOTATION_SHARD, None)
        else:
            notes[ANNOTATION_SHARD] = marker
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[key] = new
        loop = asyncio.get_running_loop()
        for cache, deliver, lag in self.caches:

            def arrive(cache: Indexer = cache, deliver: Any = deliver, new: JSON = new) -> None:
                old = cache.upsert(copy.deepcopy(new))
                deliver(old, new)

            loop.call_later(lag, arrive)
        return new

    async def get(self, _res: object, name: str, _namespace: str) -> JSON:
        await asyncio.sleep(0.001)
        if name not in self.leases:
            raise ApiError(404, None, "not found")
        return copy.deepcopy(self.leases[name])

    def holders(self) -> dict[str, str]:
        return {k: holder(marker_of(o)) for k, o in self.objects.items()}


def lease(identity: str, renew: str = "1") -> JSON:
    return {
        "metadata": {"name": f"aviator-shard-{identity}"},
        "spec": {"holderIdentity": identity, "leaseDurationSeconds": 2, "renewTime": renew},
    }


class Replica:
    def __init__(self, api: FakeApi, identity: str, lag: float) -> None:
        self.api = api
        self.cache = Indexer()
        self.enqueued: list[str] = []
        self.manager = ShardManager(
            api,  # type: ignore[arg-type]
            identity,
            self.cache,
            NS,
            on_gained=lambda _k: None,
            on_lost=lambda _k: None,
            enqueue=self.enqueued.append,
            retry_period=0.05,
        )
        handler = self.manager.policy_handler()
        api.attach(
            self.cache,
            lambda old, new: (
                handler.on_add(new, True) if old is None else handler.on_update(old, new)
            ),
            lag,
        )
        self.term: asyncio.Task[None] | None = None

    def see(self, *leases: JSON) -> None:
        """These Leases exist (as the API server holds them) and this replica saw them."""
        handler = self.manager.lease_handler()
        for one in leases:
            self.api.leases[one["metadata"]["name"]] = one
            handler.on_update(one, one)

    def start(self) -> None:
        self.term = asyncio.create_task(self.manager.run())

    async def crash(self) -> None:
        assert self.term is not None
        self.term.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.term


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 (the state is spread over several objects)
            await asyncio.sleep(0.005)


@pytest.fixture
async def exclusive() -> AsyncIterator[list[Replica]]:
    """Replicas, and a watcher failing the test if two of them may reconcile one key."""
    replicas: list[Replica] = []
    overlaps: list[tuple[str, list[str]]] = []

    async def watch() -> None:
        while True:
            for key in KEYS:
                owners = [r.manager.identity for r in replicas if r.manager.owns(key)]
                if len(owners) > 1:
                    overlaps.append((key, owners))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    yield replicas
    watcher.cancel()
    for r in replicas:
        if r.term is not None:
            r.term.cancel()
    assert overlaps == []


async def test_join_splits_by_the_ring_and_crash_moves_after_expiry(
    exclusive: list[Replica],
) -> None:
    api = FakeApi()
    # a's cache lags more: a claim over a's head would show as both owning a key.
    a, b = Replica(api, "a", lag=0.03), Replica(api, "b", lag=0.002)
    exclusive += [a, b]
    a.see(lease("a"))
    a.start()
    await until(lambda: api.holders() == dict.fromkeys(KEYS, "a"))
    await until(lambda: all(a.manager.owns(k) for k in KEYS))

    loop = asyncio.get_running_loop()
    seen_b = loop.time()  # b's Lease never changes again: it expires 2 s from here
    b.see(lease("a"), lease("b"))
    b.start()
    # Until a sees b join, a keeps every policy and b takes none.
    await asyncio.sleep(0.2)
    assert api.holders() == dict.fromkeys(KEYS, "a")
    a.see(lease("a"), lease("b"))
    split = ring.assign({"a", "b"}, KEYS)
    await until(lambda: api.holders() == split)
    await until(
        lambda: all(
            r.manager.owns(k) for k, w in split.items() for r in (a, b) if w == r.manager.identity
        )
    )
    assert {k for k in KEYS if b.manager.owns(k)} == {k for k, w in split.items() if w == "b"}
    assert set(b.enqueued) >= {k for k, w in split.items() if w == "b"}

    # b crashes: a takes its policies once b's Lease expired, not before.
    await b.crash()
    assert loop.time() - seen_b < 1.8, "too slow to test the expiry"
    assert api.holders() == split
    await until(lambda: api.holders() == dict.fromkeys(KEYS, "a"))
    assert loop.time() - seen_b >= 2.0


async def test_a_release_waits_for_the_reconcile_in_flight(exclusive: list[Replica]) -> None:
    api = FakeApi()
    a, b = Replica(api, "a", lag=0.002), Replica(api, "b", lag=0.002)
    exclusive += [a, b]
    a.see(lease("a"))
    a.start()
    await until(lambda: all(a.manager.owns(k) for k in KEYS))
    moving = next(k for k, w in ring.assign({"a", "b"}, KEYS).items() if w == "b")

    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(key: str) -> str:
        entered.set()
        await gate.wait()
        return key

    reconcile = asyncio.create_task(a.manager.guard(moving, slow))
    await entered.wait()
    for r in (a, b):
        r.see(lease("a"), lease("b"))
    b.start()
    await until(lambda: not a.manager.owns(moving))  # a stopped taking new work ...
    assert await a.manager.guard(moving, slow) is None
    await asyncio.sleep(0.2)
    assert api.holders()[moving] == "a"  # ... but keeps the marker while it runs
    gate.set()
    assert await reconcile == moving
    await until(lambda: api.holders()[moving] == "b" and b.manager.owns(moving))


async def test_a_new_term_claims_its_old_markers_again(exclusive: list[Replica]) -> None:
    api = FakeApi()
    a = Replica(api, "a", lag=0.002)
    exclusive.append(a)
    a.see(lease("a"))
    a.start()
    await until(lambda: all(a.manager.owns(k) for k in KEYS))
    first = {k: marker_of(o) for k, o in api.objects.items()}
    await a.crash()
    assert not any(a.manager.owns(k) for k in KEYS)
    a.start()
    await until(lambda: all(a.manager.owns(k) for k in KEYS))
    assert all(marker_of(o) != first[k] for k, o in api.objects.items())


async def test_a_member_whose_renewals_the_watch_missed_keeps_its_policies(
    exclusive: list[Replica],
) -> None:
    api = FakeApi()
    a, b = Replica(api, "a", lag=0.002), Replica(api, "b", lag=0.002)
    exclusive += [a, b]
    for r in (a, b):
        r.see(lease("a"), lease("b"))
    a.start()
    b.start()
    split = ring.assign({"a", "b"}, KEYS)
    await until(lambda: api.holders() == split)
    # Both renew, but a's watch misses b's renewals: only a read can tell a.
    renewals = 0

    async def renew() -> None:
        nonlocal renewals
        while True:
            renewals += 1
            b.see(lease("a", renew=str(renewals)), lease("b", renew=str(renewals)))
            a.see(lease("a", renew=str(renewals)))
            await asyncio.sleep(0.5)

    renewing = asyncio.create_task(renew())
    try:
        await asyncio.sleep(3.0)  # past b's expiry in a's (stalled) view
        assert api.holders() == split
        assert "b" in a.manager.members.alive(asyncio.get_running_loop().time())
    finally:
        renewing.cancel()
