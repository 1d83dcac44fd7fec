"""What the e2e scenarios do to a cluster and observe in it, with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import yaml
from e2e_cluster import REPO, Cluster

from aviator.box.stats import Summary
from aviator.box.traffic import Load
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.marks import LABEL_SERVICE_NAME
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, PODS, SERVICES

FUNCTIONAL = REPO / "test" / "functional"
SAMPLE = REPO / "config" / "samples" / "aviator_v1alpha1_aviatorpolicy.yaml"
TARGET = "my-app-service"
SHADOW = "my-app-service-aviator"

T = TypeVar("T")
# kube-proxy applies a slice change within its minSyncPeriod (1 s by default), plus slack.
KUBE_PROXY_SYNC_S = 2.0


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


async def wait_for(
    what: str,
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    timeout_s: float,
    poll_s: float = 0.25,
) -> tuple[T, float]:
    """Poll until ok(probe()); return the value and the seconds it took, or fail with
    the last value seen."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        value = await probe()
        if ok(value):
            return value, time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {what}; last: {value!r}"
            )
        await asyncio.sleep(poll_s)


class Scenario:
    def __init__(self, cluster: Cluster, kube: KubeClient, namespace: str) -> None:
        self.cluster = cluster
        self.kube = kube
        self.ns = namespace
        self.loads: list[Load] = []

    async def close(self) -> None:
        for load in self.loads:
            await load.stop()

    # -- acting ----------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.cluster.kubectl("-n", self.ns, *args, input=input, check=check).stdout

    async def deploy_quickstart(self) -> None:
        for name in ("fast-app.yaml", "slow-app.yaml", "test-svc.yaml"):
            self.kubectl("apply", "-f", str(FUNCTIONAL / name))
        await self.wait_ready_pods(fast=2, slow=2)
        await wait_for(
            f"{TARGET} to route to all 4 pods",
            lambda: self.routed(TARGET),
            lambda pods: len(pods) == 4,
            timeout_s=30,
        )

    async def wait_ready_pods(self, fast: int, slow: int, timeout_s: float = 90) -> None:
        async def count() -> tuple[int, int]:
            return len(await self.pods("fast")), len(await self.pods("slow"))

        await wait_for(
            f"{fast} fast and {slow} slow ready pods", count, lambda c: c == (fast, slow), timeout_s
        )

    def policy(self, name: str = "e2e-policy", **spec: Any) -> dict[str, Any]:
        """The sample policy with short intervals for tests, plus overrides."""
        doc: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
        doc["metadata"] = {"name": name, "namespace": self.ns}
        doc["spec"] = deep_merge(
            doc["spec"],
            {"evaluationInterval": "1s", "dampening": {"consecutiveIntervals": 2}},
        )
        source = os.environ.get("E2E_LATENCY_SOURCE")
        if source:
            doc["spec"]["latencySource"] = source
        doc["spec"] = deep_merge(doc["spec"], spec)
        return doc

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def load(self, service: str, concurrency: int = 4) -> Load:
        connect = self.cluster.connector()
        load = Load(
            lambda: self.cluster.address(self.ns, service),
            concurrency=concurrency,
            **({"connect": connect} if connect else {}),
        )
        load.start()
        self.loads.append(load)
        return load

    async def measure(self, service: str, seconds: float, concurrency: int = 4) -> Summary:
        load = self.load(service, concurrency)
        start = time.monotonic()
        await asyncio.sleep(seconds)  # measuring traffic over a window is the point here
        await load.stop()
        self.loads.remove(load)
        return load.summary(since=start)

    # -- observing -------------------------------------------------------------------

    async def pods(self, version: str) -> set[str]:
        """Ready, non-terminating pods of one test app version."""
        answer = await self.kube.list(
            PODS, self.ns, params={"labelSelector": f"app=my-app,version={version}"}
        )
        out = set()
        for pod in answer.get("items", []):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            conditions = pod.get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                out.add(pod["metadata"]["name"])
        return out

    async def routed(self, service: str) -> set[str]:
        """Pods behind the ready endpoints of ALL slices of a Service (what kube-proxy uses)."""
        answer = await self.kube.list(
            ENDPOINTSLICES,
            self.ns,
            params={"labelSelector": f"{LABEL_SERVICE_NAME}={service}"},
        )
        out = set()
        for s in answer.get("items", []):
            for ep in s.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                out.add((ep.get("targetRef") or {}).get("name", ep["addresses"][0]))
        return out

    async def avp(self, name: str = "e2e-policy") -> dict[str, Any] | None:
        try:
            return await self.kube.get(AVIATORPOLICIES, name, self.ns)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def service(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(SERVICES, name, self.ns)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def proxy_follows(self, service: str) -> None:
        """Wait until the Service proxy spreads new connections over exactly the routed
        pods. kube-proxy (Kind) cannot be observed: wait out its sync instead."""
        routed = len(await self.routed(service))
        if self.cluster.proxy_backends(self.ns, service) is None:
            await asyncio.sleep(KUBE_PROXY_SYNC_S)
            return
        await wait_for(
            f"the proxy of {service} to follow its {routed} routed pods",
            lambda: _completed(self.cluster.proxy_backends(self.ns, service)),
            lambda n: n == routed,
            timeout_s=30,
        )

    async def converge_to(self, service: str, pods: set[str], timeout_s: float = 30) -> float:
        """Wait until exactly `pods` serve `service` (its slices, then the Service proxy:
        new connections dialled from then on land on them); the seconds the slices took."""
        _, took = await wait_for(
            f"{service} to route to {sorted(pods)}",
            lambda: self.routed(service),
            lambda routed: routed == pods,
            timeout_s,
        )
        await self.proxy_follows(service)
        return took

    async def converge_to_fast(self, service: str, timeout_s: float = 30) -> float:
        """`converge_to` the fast pods."""
        return await self.converge_to(service, await self.pods("fast"), timeout_s)


async def _completed(value: T) -> T:
    return value


@contextlib.asynccontextmanager
async def deployed_quickstart(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> AsyncIterator[Scenario]:
    """A Scenario in `namespace` with the quick-start apps Ready; its loads stop on exit."""
    scenario = Scenario(cluster, kube, namespace)
    await scenario.deploy_quickstart()
    try:
        yield scenario
    finally:
        await scenario.close()
