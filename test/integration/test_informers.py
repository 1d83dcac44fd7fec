"""Informers against a real kube-apiserver: bursts, expired watches, server restarts.

What an informer promises, and so what these tests claim: its handlers' rebuilt state
ends equal to the server's; every object it delivered and that is later deleted gets a
delete (a tombstone if the delete happened while it was not watching); and it misses an
object only if that object's whole life fell between two points where it was in sync with
the server (a watch that broke and a relist after it). An object created and deleted while
the watch was down is never seen by any informer, client-go's included.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from informer_faults import FaultyClient, converge

from aviator.informers import (
    DeletedFinalStateUnknown,
    InformerFactory,
    SharedIndexInformer,
    object_key,
    resource_version,
)
from aviator.kube import ApiError, KubeClient
from aviator.kube.podfields import CONTROLLER_POD
from aviator.kube.resources import CONFIGMAPS, PODS, SERVICEACCOUNTS, Resource
from aviator.testing.controlplane import ControlPlane
from aviator.testing.waiting import bounded, eventually

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
        self.seen: set[str] = set()  # every key ever added
        self.adds = 0
        self.updates = 0
        self.backwards: list[str] = []
        self.problems: list[str] = []  # notifications that contradict the ones before
        self.changed = asyncio.Event()

    def _check_forward(self, key: str, obj: JSON) -> None:
        old = self.state.get(key)
        if old is not None and int(resource_version(obj)) < int(resource_version(old)):
            self.backwards.append(key)

    def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        key = object_key(obj)
        if key in self.state:
            self.problems.append(f"add of cached {key}")
        self._check_forward(key, obj)
        self.state[key] = obj
        self.seen.add(key)
        self.adds += 1
        self.changed.set()

    def on_update(self, old: JSON, new: JSON) -> None:
        key = object_key(new)
        if key not in self.state:
            self.problems.append(f"update of unknown {key}")
        self._check_forward(key, new)
        self.state[key] = new
        self.updates += 1
        self.changed.set()

    def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        key = object_key(obj)
        if key not in self.state:
            self.problems.append(f"delete of unknown {key}")
        self.state.pop(key, None)
        self.deletes.setdefault(key, []).append(obj)
        self.changed.set()

    def versions(self) -> dict[str, str]:
        return {k: resource_version(o) for k, o in self.state.items()}


async def mirrored(
    mirror: Mirror, kube: KubeClient, namespace: str, informer: SharedIndexInformer, within: float
) -> None:
    """Wait until the mirror equals a quorum list of the server; say how it differs if not."""
    reflector = informer.reflector
    await converge(
        mirror.versions,
        mirror.changed,
        kube,
        namespace,
        within=within,
        state=lambda: (
            f"reflector: {reflector.lists} lists, {reflector.watches} watches, "
            f"{reflector.expirations} expirations, at {reflector.last_sync_resource_version}"
        ),
    )


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
        await bounded(factory.wait_for_cache_sync(), within=30, what="the first list")
        await bounded(registration.wait_for_sync(), within=30, what="the initial adds handled")
        assert mirror.adds == 20
        deleted = await burst(kube, namespace, 500, seed=1)
        await mirrored(mirror, kube, namespace, informer, within=30)
        assert mirror.problems == []
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
        await bounded(informer.wait_for_sync(), within=30, what="the first list")
        await kube.patch(CONFIGMAPS, "out", {"metadata": {"labels": {"pick": "yes"}}}, namespace)
        await eventually(
            lambda: f"{namespace}/out" in mirror.state,
            within=30,
            what="an add for an object that came to match the selector",
            changed=mirror.changed,
        )
        await kube.patch(CONFIGMAPS, "in", {"metadata": {"labels": {"pick": "no"}}}, namespace)
        await eventually(
            lambda: f"{namespace}/in" not in mirror.state,
            within=30,
            what="a delete for an object that stopped matching the selector",
            changed=mirror.changed,
        )
        assert sorted(informer.indexer.keys()) == [f"{namespace}/out"]
    finally:
        await informer.stop()


async def listed_and_watched(
    kube: KubeClient,
    resource: Resource,
    namespace: str,
    write: Callable[[str], Awaitable[None]],
    **options: Any,
) -> list[tuple[JSON, JSON | None, JSON]]:
    """`write("listed")`, an informer (with `options`) synced, `write("watched")`; then for
    each, once the handler saw the server's version: (what a GET returns, what the cache
    holds, what the handler rebuilt)."""
    await write("listed")
    informer = SharedIndexInformer(kube, resource, namespace=namespace, **options)
    mirror = Mirror()
    informer.add_event_handler(mirror)
    await informer.start()
    try:
        await bounded(informer.wait_for_sync(), within=30, what="the first list")
        await write("watched")
        out = []
        for name in ("listed", "watched"):
            server = await kube.get(resource, name, namespace)
            key = f"{namespace}/{name}"
            version = resource_version(server)
            await eventually(
                lambda key=key, version=version: (
                    resource_version(mirror.state.get(key, {})) == version
                ),
                within=30,
                what=f"{name} at the server's version",
                changed=mirror.changed,
            )
            out.append((server, informer.indexer.get(key), mirror.state[key]))
        return out
    finally:
        await informer.stop()


@pytest.mark.parametrize("drop", [True, False], ids=["dropped", "kept"])
async def test_cached_objects_are_the_servers_less_managed_fields(
    kube: KubeClient, namespace: str, drop: bool
) -> None:
    # One object listed, one watched (added and then modified), each written by two
    # field managers; the cache holds what a GET returns, less metadata.managedFields.
    async def write(name: str) -> None:
        await kube.request(
            "POST",
            CONFIGMAPS.path(namespace),
            params={"fieldManager": "first"},
            body={"metadata": {"name": name, "labels": {"a": "1"}}, "data": {"k": "v"}},
        )
        await kube.patch(
            CONFIGMAPS, name, {"data": {"k2": "v2"}}, namespace, params={"fieldManager": "second"}
        )

    seen = await listed_and_watched(kube, CONFIGMAPS, namespace, write, drop_managed_fields=drop)
    for server, cached, mirrored in seen:
        assert len(server["metadata"]["managedFields"]) == 2
        if drop:
            server["metadata"].pop("managedFields")
        assert cached == mirrored == server


async def test_the_controllers_pod_cache_holds_its_projection_listed_or_watched(
    kube: KubeClient, namespace: str
) -> None:
    # A Pod as a cluster has it (containers with env and probes, the kubelet's status);
    # the controller's cache holds exactly its projection of what a GET returns, whether
    # the Pod came in the list or through the watch.
    try:
        await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "default"}}, namespace)
    except ApiError as err:
        if err.status != 409:  # a controller-manager made it already
            raise

    async def write(name: str) -> None:
        container = {
            "name": "app",
            "image": "registry.example/app:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "env": [{"name": "A", "value": "b"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        }
        body = {
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [container]},
        }
        await kube.create(PODS, body, namespace)
        status = {"phase": "Running", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]}
        await kube.patch(PODS, name, {"status": status}, namespace, subresource="status")

    seen = await listed_and_watched(kube, PODS, namespace, write, projection=CONTROLLER_POD)
    for server, cached, mirrored in seen:
        assert cached == mirrored == CONTROLLER_POD.project(server)
        assert cached is not None and "env" not in cached["spec"]["containers"][0]
        assert "managedFields" not in cached["metadata"]
        assert cached["status"]["podIPs"] == [{"ip": "10.0.0.9"}]


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
    await bounded(informer.wait_for_sync(), within=30, what="the first list")
    await mirrored(mirror, kube, ns, informer, within=30)
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
        await mirrored(mirror, kube, ns, informer, within=30)
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


@dataclass
class Life:
    """One object's life in resourceVersions, as far as its writer can know it."""

    created: int  # the create's version (exact)
    # A version at which it still existed and after which the delete came (every write
    # the writer had been answered before it issued the delete): None while it lives.
    deleted_after: int | None = None


async def test_apiserver_restart_loses_no_event(
    private_plane: ControlPlane, private_kube: KubeClient, private_namespace: str
) -> None:
    """Writes go on while the API server restarts; every handler sees what it is owed.

    An object the informer delivered and that was deleted must get a delete or a tombstone.
    An object it never delivered must have lived entirely inside a gap: no version at which
    the reflector was in sync with the server (a list, a watch event, a bookmark) may fall
    within its life.
    """
    kube, ns = private_kube, private_namespace
    client = FaultyClient(kube)  # injects nothing: records what the reflector was given
    informer = SharedIndexInformer(client, CONFIGMAPS, namespace=ns)
    mirror = Mirror()
    informer.add_event_handler(mirror)
    await informer.start()
    stop_writing = asyncio.Event()
    created: list[str] = []
    removed: list[str] = []
    lives: dict[str, Life] = {}
    latest = 0  # the newest version any write of the writer returned

    def noted(obj: JSON | None) -> int:
        nonlocal latest
        if obj and resource_version(obj):
            latest = max(latest, int(resource_version(obj)))
        return latest

    async def writer() -> None:
        rng = random.Random(7)
        i = 0
        while not stop_writing.is_set():
            i += 1
            name = f"w-{i}"
            made = await retrying(kube.create, CONFIGMAPS, configmap(name, "0"), ns)
            if made is None:
                # The first attempt created it unanswered (409 on the retry). Nobody has
                # changed it since, so its version now is the create's.
                made = await retrying(kube.get, CONFIGMAPS, name, ns)
            lives[name] = Life(int(resource_version(made)))
            noted(made)
            created.append(name)
            if i % 3 == 0:
                victim = rng.choice([n for n in created if n not in removed])
                # The delete comes after every write answered so far.
                after = latest
                await retrying(kube.delete, CONFIGMAPS, victim, ns)
                lives[victim].deleted_after = after
                removed.append(victim)
            elif i % 2 == 0:
                target = rng.choice([n for n in created if n not in removed])
                noted(await retrying(kube.patch, CONFIGMAPS, target, {"data": {"v": str(i)}}, ns))
            await asyncio.sleep(0.02)  # pace the writer; nothing waits on this

    def seen_created_since(index: int) -> bool:
        return any(f"{ns}/{name}" in mirror.seen for name in created[index:])

    writing = asyncio.create_task(writer())
    try:
        await bounded(informer.wait_for_sync(), within=30, what="the first list")
        # Changes flow through the watch before the restart ...
        await eventually(
            lambda: seen_created_since(10),
            within=30,
            what="the informer delivering the writer's changes",
            changed=mirror.changed,
        )
        await asyncio.to_thread(private_plane.restart_apiserver)
        # ... and again after it: the informer delivers objects created after the restart.
        after_restart = len(created)
        await eventually(
            lambda: seen_created_since(after_restart),
            within=60,
            what="the informer delivering changes made after the API server restarted",
            changed=mirror.changed,
            state=client.describe,
        )
        stop_writing.set()
        await bounded(writing, within=120, what="the writer to stop")
        await mirrored(mirror, kube, ns, informer, within=30)
        assert mirror.backwards == []
        assert mirror.problems == []
        assert len(created) > 20
        # Every delete of an object the handler had been given reached it.
        for name in removed:
            key = f"{ns}/{name}"
            if key in mirror.seen:
                assert mirror.deletes.get(key), f"{name} was delivered, deleted, never deleted"
        # What it was never given, it could not have seen: the object lived only between
        # two points at which the reflector was in sync.
        in_sync = sorted(
            {int(v) for v in client.list_versions if v}
            | {
                int(resource_version(e["object"]))
                for e in client.events
                if e.get("type") in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
            }
        )
        for name in created:
            key = f"{ns}/{name}"
            if key in mirror.seen:
                continue
            life = lives[name]
            assert life.deleted_after is not None, f"{name} still exists, never delivered"
            during = [v for v in in_sync if life.created <= v <= life.deleted_after]
            assert not during, (
                f"{name} lived from {life.created} past {life.deleted_after}, the reflector was "
                f"in sync at {during}, yet no handler was ever given it"
            )
        cache = {object_key(o): resource_version(o) for o in informer.indexer.list()}
        assert cache == mirror.versions()
        assert informer.reflector.watches > 1  # the watch did break and was re-established
    finally:
        stop_writing.set()
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        await informer.stop()
