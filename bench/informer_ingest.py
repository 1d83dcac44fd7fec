"""The informer's ingest cost per core, on watch lines as a real API server writes them.

`captured_pod_line` makes a Pod on a real kube-apiserver the way a cluster does (created
by the ReplicaSet controller's field manager with an owner, defaulted and admitted by
the server, its status written through the status subresource by the kubelet's field
manager) and returns the MODIFIED event's line exactly as the watch delivered it:
full spec, status with conditions and containerStatuses, and metadata.managedFields
of both managers.

`pod_updates` replays many variants of that line: `pods` distinct pods, then status
updates of them (the Ready condition flipping, as a kubelet writes it), each with its
own resourceVersion. Re-encoding with orjson keeps the server's bytes (checked: the
captured line round-trips unchanged), so only the varied values differ.

`ingest` feeds them through the production path (aviator.kube.watchstream in 64 KiB
chunks, the event loop running between chunks as it does between reads) into a
SharedIndexInformer with one counting handler, and reports updates per CPU second of
the process: one thread, so per core. With the controller's Pod projection
(aviator.kube.podfields) it is the controller's own Pod cache.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from aviator.box.podstatus import ContainerState, running_status
from aviator.informers import SharedIndexInformer
from aviator.informers.keys import JSON
from aviator.kube import KubeClient
from aviator.kube.managedfields import line_without_managed_fields
from aviator.kube.projection import Projection
from aviator.kube.resources import PODS, SERVICEACCOUNTS
from aviator.kube.watchstream import watch_events
from aviator.runtime.gctune import tune_for_caches

CHUNK = 64 * 1024  # what one read of a busy watch connection returns
RS_HASH = "5d9c7b8f6d"


def _pod_body(ns: str) -> JSON:
    """A Deployment's pod as its ReplicaSet controller creates it (before defaulting)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"checkout-{RS_HASH}-",
            "namespace": ns,
            "labels": {"app": "checkout", "pod-template-hash": RS_HASH, "tier": "web"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T09:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"checkout-{RS_HASH}",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "nodeName": "node-7",
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/checkout:1.2.3",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "LOG_LEVEL", "value": "info"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                    "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}},
                }
            ],
            "terminationGracePeriodSeconds": 30,
        },
    }


def _status(pod_ip: str, ready: bool, at: str) -> JSON:
    app = ContainerState(
        name="app",
        image="registry.example/checkout:1.2.3",
        running=True,
        ready=ready,
        started_at=at,
        pid=4242,
    )
    since = dict.fromkeys(
        ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"),
        at,
    )
    return running_status(
        pod_ip=pod_ip, host_ip="172.18.0.7", start_time=at, containers=[app], transitions=since
    )


async def captured_pod_line(kube: KubeClient) -> bytes:
    """The watch line of a Pod's status update, as the API server sent it."""
    ns = f"ingest-{uuid.uuid4().hex[:8]}"
    await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    try:
        # No controller-manager here: make the ServiceAccount the pod is admitted with.
        await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "default"}}, ns)
        listed = await kube.list(PODS, ns)
        body = kube.watch_body(
            PODS.path(ns), {"resourceVersion": listed["metadata"]["resourceVersion"]}
        )
        created = await kube.request(
            "POST",
            PODS.path(ns),
            params={"fieldManager": "kube-controller-manager"},
            body=_pod_body(ns),
        )
        name = created["metadata"]["name"]
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await kube.patch(
            PODS,
            name,
            {"status": _status("10.244.1.17", True, at)},
            ns,
            subresource="status",
            params={"fieldManager": "kubelet"},
        )
        lines: list[bytes] = []
        buffered = b""
        async with asyncio.timeout(30):
            async for chunk in body:
                buffered += chunk
                lines = [x for x in buffered.split(b"\n") if x.strip()]
                if len(lines) >= 2 and buffered.endswith(b"\n"):
                    break
        await body.aclose()
        line = lines[1]
        assert orjson.loads(line)["type"] == "MODIFIED", line[:200]
        return line
    finally:
        await kube.request("DELETE", f"/api/v1/namespaces/{ns}")


def pod_updates(line: bytes, pods: int, updates: int) -> list[bytes]:
    """`pods` ADDED lines, then status updates round-robin over them (`updates` in all)."""
    template = orjson.loads(line)
    if orjson.dumps(template) != line:
        raise AssertionError("the captured line does not round-trip through orjson")
    pod = template["object"]
    meta, status = pod["metadata"], pod["status"]
    prefix = meta["generateName"]
    kubelet = next(e for e in meta["managedFields"] if e["manager"] == "kubelet")
    ready_conditions = [
        c for c in status["conditions"] if c["type"] in ("Ready", "ContainersReady")
    ]
    out: list[bytes] = []
    for i in range(updates):
        n = i % pods
        ready = (i // pods) % 2 == 0
        at = f"2026-12-02T20:{(i // 60) % 60:02d}:{i % 60:02d}Z"
        meta["name"] = f"{prefix}{n:05x}"
        meta["uid"] = str(uuid.UUID(int=n + 1))
        meta["resourceVersion"] = str(1_000_000 + i)
        kubelet["time"] = at
        ip = f"10.{244 + n // 65025}.{(n // 255) % 255}.{n % 255 + 1}"
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
        for cond in ready_conditions:
            cond["status"] = "True" if ready else "False"
            cond["lastTransitionTime"] = at
        status["containerStatuses"][0]["ready"] = ready
        template["type"] = "ADDED" if i < pods else "MODIFIED"
        out.append(orjson.dumps(template))
    return out


def sizes(line: bytes) -> tuple[int, int]:
    """(bytes of the line, bytes of it that are metadata.managedFields)."""
    return len(line), len(line) - len(line_without_managed_fields(line))


class ReplayClient:
    """Serves an empty list, then a watch whose body is `body` in CHUNK-sized reads.

    With decoded=True the events are decoded before the clock starts and handed over
    as objects (the informer's own share, without decoding).
    """

    def __init__(self, lines: list[bytes], *, decoded: bool) -> None:
        body = b"\n".join(lines) + b"\n"
        self._chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        self._events: list[JSON] | None = None
        if decoded:
            self._events = [orjson.loads(line_without_managed_fields(x)) for x in lines]

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
        return {"metadata": {"resourceVersion": "1"}, "items": []}

    def watch(
        self,
        path: str,
        params: Mapping[str, str | int | bool] | None = None,
        *,
        drop_managed_fields: bool = False,
        projection: Projection | None = None,
    ) -> AsyncIterator[JSON]:
        if self._events is not None:
            return self._decoded_events()
        # As KubeClient.watch: the body's chunks through watch_events.
        return watch_events(
            self._body(), drop_managed_fields=drop_managed_fields, projection=projection
        )

    async def _body(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
            await asyncio.sleep(0)  # the loop runs between reads
        await asyncio.Event().wait()  # stays open, like a quiet watch

    async def _decoded_events(self) -> AsyncIterator[JSON]:
        assert self._events is not None
        per_chunk = max(1, len(self._events) // len(self._chunks))
        for i, event in enumerate(self._events):
            yield event
            if i % per_chunk == per_chunk - 1:
                await asyncio.sleep(0)
        await asyncio.Event().wait()


class Counter:
    """A handler that counts, and wakes a waiter at a target count."""

    def __init__(self) -> None:
        self.adds = 0
        self.updates = 0
        self.target = 0
        self.reached = asyncio.Event()
        self.last_at = 0.0

    def _bump(self) -> None:
        self.last_at = time.perf_counter()
        if self.adds + self.updates >= self.target > 0:
            self.reached.set()

    def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        self.adds += 1
        self._bump()

    def on_update(self, old: JSON, new: JSON) -> None:
        self.updates += 1
        self._bump()

    def on_delete(self, obj: object) -> None:
        pass

    def expect(self, total: int) -> None:
        self.target = total
        self.reached.clear()
        self._bump()


async def ingest(
    lines: list[bytes],
    *,
    decoded: bool = False,
    drop_managed_fields: bool = True,
    projection: Projection | None = None,
) -> tuple[float, float]:
    """(updates per CPU second, updates per wall second) through one informer."""
    tune_for_caches()  # as the controller and the agent run
    client = ReplayClient(lines, decoded=decoded)
    informer = SharedIndexInformer(
        client, PODS, drop_managed_fields=drop_managed_fields, projection=projection
    )
    counter = Counter()
    counter.expect(len(lines))
    informer.add_event_handler(counter)
    cpu, wall = time.process_time(), time.perf_counter()
    await informer.start()
    await asyncio.wait_for(counter.reached.wait(), 600)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await informer.stop()
    return len(lines) / cpu, len(lines) / wall
