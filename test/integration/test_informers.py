"""Informers against a real kube-apiserver: bursts, expired watches, server restarts."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from aviator.informers import (
    DeletedFinalStateUnknown,
    InformerFactory,
    SharedIndexInformer,
    object_key,
    resource_version,
)
from aviator.kube import ApiError, KubeClient
from aviator.kube.resources import CONFIGMAPS
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

JSON = dict[str, Any]


class Mirror:
    """Rebuilds the server's state from notifications alone, and checks their sanity.

    If the informer lost an event, the mirror ends up different from the server; if it
    delivered one out of order, a resourceVersion goes backwards for some key.
    """

    def __init__(self) -> None:
        self.state: dict[str, JSON] = {}
        self.deletes: dict[str, list[JSON | DeletedFinalStateUnknown]] = {}
        self.adds = 0
        self.updates = 0
        self.backwards: list[str] = []
        self.changed = asyncio.Event()

    def _check_forward(self, key: str, obj: JSON) -> None:
        old = self.state.get(key)
        if old is not None and int(resource_version(obj)) < int(resource_version(old)):
            self.backwards.append(key)

    def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        self._check_forward(object_key(obj), obj)
        self.state[object_key(obj)] = obj
        self.adds += 1
        self.changed.set()

    def on_update(self, old: JSON, new: JSON) -> None:
        self._check_forward(object_key(new), new)
        self.state[object_key(new)] = new
        self.updates += 1
        self.changed.set()

    def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        key = object_key(obj)
        self.state.pop(key, None)
        self.deletes.setdefault(key, []).append(obj)
        self.changed.set()

    def versions(self) -> dict[str, str]:
        return {k: resource_version(o) for k, o in self.state.items()}


async def server_versions(kube: KubeClient, namespace: str) -> dict[str, str]:
    listed = await kube.list(CONFIGMAPS, namespace, params={"resourceVersion": ""})
    return {object_key(o): resource_version(o) for o in listed["items"]}


async def converge(mirror: Mirror, kube: KubeClient, namespace: str, within: float = 60) -> None:
    """Wait until the mirror equals a quorum list of the server (re-checked on changes)."""
    async with asyncio.timeout(within):
        while True:
            mirror.changed.clear()
            if mirror.versions() == await server_versions(kube, namespace):
                return
            # On timeout, re-list: the server may have moved without us seeing it yet.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(mirror.changed.wait(), 1.0)


def configmap(name: str, value: str) -> JSON:
    return {"metadata": {"name": name}, "data": {"v": value}}


async def burst(kube: KubeClient, namespace: str, ops: int, seed: int) -> set[str]:
    """`ops` random creates/updates/deletes from 8 concurrent writers; returns deleted names."""
    rng = random.Random(seed)
    live: list[str] = []
    deleted: set[str] = set()
    plan: list[tuple[str, str]] = []
    for i in range(ops):
        roll = rng.random()
        if not live or roll < 0.4:
            name = f"cm-{seed}-{i}"
            live.append(name)
            plan.append(("create", name))
        elif roll < 0.75:
            plan.append(("update", rng.choice(live)))
        else:
            name = live.pop(rng.randrange(len(live)))
            deleted.add(name)
            plan.append(("delete", name))
    # Writers take ops in plan order per name (one lane per name hash), so each name's
    # operations stay ordered while different names interleave.
    lanes: list[list[tuple[str, str]]] = [[] for _ in range(8)]
    for op in plan:
        lanes[hash(op[1]) % 8].append(op)

    async def run_lane(lane: list[tuple[str, str]]) -> None:
        for verb, name in lane:
            if verb == "create":
                await kube.create(CONFIGMAPS, configmap(name, "0"), namespace)
            elif verb == "update":
                await kube.patch(CONFIGMAPS, name, {"data": {"v": uuid.uuid4().hex}}, namespace)
            else:
                await kube.delete(CONFIGMAPS, name, namespace)

    await asyncio.gather(*(run_lane(lane) for lane in lanes))
    return deleted


async def test_cache_converges_through_a_burst_of_500_changes(
    kube: KubeClient, namespace: str
) -> None:
    for i in range(20):  # some objects exist before the informer starts
        await kube.create(CONFIGMAPS, configmap(f"pre-{i}", "0"), namespace)
    factory = InformerFactory(kube)
    informer = factory.informer_for(CONFIGMAPS, namespace=namespace)
    mirror = Mirror()
    registration = informer.add_event_handler(mirror)
    await factory.start()
    try:
        await asyncio.wait_for(factory.wait_for_cache_sync(), 30)
        await asyncio.wait_for(registration.wait_for_sync(), 30)
        assert mirror.adds == 20
        deleted = await burst(kube, namespace, 500, seed=1)
        await converge(mirror, kube, namespace)
        cache = {object_key(o): resource_version(o) for o in informer.indexer.list()}
        assert cache == mirror.versions()
        assert mirror.backwards == []
        # Every delete was seen as a real delete (the watch never broke here).
        assert {k.split("/")[1] for k in mirror.deletes} == deleted
        assert all(
            not isinstance(o, DeletedFinalStateUnknown) for d in mirror.deletes.values() for o in d
        )
        assert informer.reflector.lists == 1  # no relist needed
    finally:
        await factory.stop()


async def test_label_selector_limits_the_cache(kube: KubeClient, namespace: str) -> None:
    informer = SharedIndexInformer(kube, CONFIGMAPS, namespace=namespace, label_selector="pick=yes")
    await kube.create(
        CONFIGMAPS, {"metadata": {"name": "in", "labels": {"pick": "yes"}}}, namespace
    )
    await kube.create(CONFIGMAPS, {"metadata": {"name": "out"}}, namespace)
    mirror = Mirror()
    informer.add_event_handler(mirror)
    await informer.start()
    try:
        await asyncio.wait_for(informer.wait_for_sync(), 30)
        await kube.patch(CONFIGMAPS, "out", {"metadata": {"labels": {"pick": "yes"}}}, namespace)
        async with asyncio.timeout(30):
            while "out" not in {k.split("/")[1] for k in mirror.state}:
                mirror.changed.clear()
                await mirror.changed.wait()
        await kube.patch(CONFIGMAPS, "in", {"metadata": {"labels": {"pick": "no"}}}, namespace)
        async with asyncio.timeout(30):
            while f"{namespace}/in" in mirror.state:
                mirror.changed.clear()
                await mirror.changed.wait()
        assert sorted(informer.indexer.keys()) == [f"{namespace}/out"]
    finally:
        await informer.stop()


# Tests that restart the API server or compact etcd get a control plane of their own.


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


@pytest.fixture
def private_namespace(private_plane: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    private_plane.kubectl("create", "namespace", name)
    return name


async def retrying(call: Any, *args: Any, within: float = 90) -> Any:
    """Run an API call until the server answers (it may be restarting).

    A retried create may meet its own earlier success (409), a retried delete likewise
    (404): both mean the change is done.
    """
    attempt = 0
    async with asyncio.timeout(within):
        while True:
            attempt += 1
            try:
                return await call(*args)
            except (TimeoutError, ApiError, OSError) as err:
                if isinstance(err, ApiError) and err.status in (404, 409) and attempt > 1:
                    return None
                if isinstance(err, ApiError) and err.status < 500 and err.status != 429:
                    raise
                await asyncio.sleep(0.5)
            except Exception as err:  # aiohttp connection errors while it restarts
                if "aiohttp" not in type(err).__module__:
                    raise
                await asyncio.sleep(0.5)


async def test_expired_watch_relists_with_tombstones(
    private_plane: ControlPlane, private_kube: KubeClient, private_namespace: str
) -> None:
    kube, ns = private_kube, private_namespace
    for name in ("stay", "change", "vanish"):
        await kube.create(CONFIGMAPS, configmap(name, "0"), ns)
    informer = SharedIndexInformer(kube, CONFIGMAPS, namespace=ns)
    mirror = Mirror()
    informer.add_event_handler(mirror)
    await informer.start()
    await asyncio.wait_for(informer.wait_for_sync(), 30)
    await converge(mirror, kube, ns)
    await informer.stop()  # disconnected: keeps its cache and last resourceVersion
    watched_from = informer.reflector.last_sync_resource_version

    await kube.delete(CONFIGMAPS, "vanish", ns)
    await kube.patch(CONFIGMAPS, "change", {"data": {"v": "1"}}, ns)
    await kube.create(CONFIGMAPS, configmap("new", "0"), ns)
    private_plane.compact_etcd()
    # A fresh watch cache starts at the current revision, so our version is too old
    # there as well as in etcd.
    await asyncio.to_thread(private_plane.restart_apiserver)

    lists_before = informer.reflector.lists
    await informer.start()
    try:
        await converge(mirror, kube, ns)
        assert informer.reflector.expirations >= 1  # the resumed watch got 410 ...
        assert informer.reflector.lists > lists_before  # ... so it relisted ...
        assert informer.reflector.last_sync_resource_version != watched_from
        # ... and the delete it never saw arrives as a tombstone with the last known state.
        (tombstone,) = mirror.deletes[f"{ns}/vanish"]
        assert isinstance(tombstone, DeletedFinalStateUnknown)
        assert tombstone.obj["data"] == {"v": "0"}
        assert mirror.state[f"{ns}/change"]["data"] == {"v": "1"}
        assert f"{ns}/new" in mirror.state
        assert sorted(informer.indexer.keys()) == sorted(mirror.state)
        assert mirror.backwards == []
    finally:
        await informer.stop()


async def test_apiserver_restart_loses_no_event(
    private_plane: ControlPlane, private_kube: KubeClient, private_namespace: str
) -> None:
    kube, ns = private_kube, private_namespace
    informer = SharedIndexInformer(kube, CONFIGMAPS, namespace=ns)
    mirror = Mirror()
    informer.add_event_handler(mirror)
    await informer.start()
    stop_writing = asyncio.Event()
    created: list[str] = []
    removed: list[str] = []

    async def writer() -> None:
        rng = random.Random(7)
        i = 0
        while not stop_writing.is_set():
            i += 1
            name = f"w-{i}"
            await retrying(kube.create, CONFIGMAPS, configmap(name, "0"), ns)
            created.append(name)
            if i % 3 == 0:
                victim = rng.choice([n for n in created if n not in removed])
                await retrying(kube.delete, CONFIGMAPS, victim, ns)
                removed.append(victim)
            elif i % 2 == 0:
                target = rng.choice([n for n in created if n not in removed])
                await retrying(kube.patch, CONFIGMAPS, target, {"data": {"v": str(i)}}, ns)
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(informer.wait_for_sync(), 30)
        writing = asyncio.create_task(writer())
        await asyncio.sleep(1.0)  # let changes flow before the restart
        await asyncio.to_thread(private_plane.restart_apiserver)
        await asyncio.sleep(1.0)  # and after it
        stop_writing.set()
        await asyncio.wait_for(writing, 120)
        await converge(mirror, kube, ns, within=90)
        assert mirror.backwards == []
        assert len(created) > 20
        # Every delete reached the handler, as a delete or a tombstone.
        assert {k.split("/")[1] for k in mirror.deletes} == set(removed)
        cache = {object_key(o): resource_version(o) for o in informer.indexer.list()}
        assert cache == mirror.versions()
        assert informer.reflector.watches > 1  # the watch did break and was re-established
    finally:
        stop_writing.set()
        await informer.stop()
