"""The real kube-proxy in the box (`aviator box up --proxy kube-proxy`).

Traffic to a Service's real ClusterIP (from inside the box's network namespace, as a
pod's would be) goes through upstream kube-proxy's nftables rules: it reaches only the
pods of the Service's EndpointSlices, a slice change moves new connections, and where
kube-proxy and the box's own proxy (aviator/box/proxy.py) read the same slices
differently, `test_where_kube_proxy_and_the_box_proxy_differ` pins both readings.

These start their own box (one node in zone box-a, `--zones 2`, no Aviator) and skip, saying why, where
kube-proxy or `nft` is missing (`make node-components`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from e2e_cluster import BoxCluster, node_unavailable, skip_if
from e2e_inbox import InBox, cluster_ip, served
from e2e_scenario import Scenario, deployed_quickstart, wait_for

from aviator.kube.client import KubeClient
from aviator.kube.marks import LABEL_SERVICE_NAME
from aviator.kube.resources import ENDPOINTSLICES, PODS

pytestmark = pytest.mark.e2e

ROUTED = "kp-routed"
ZONE = "box-a"  # the box's one node's zone, where kube-proxy runs


@pytest.fixture(scope="module")
def kp_box() -> Iterator[BoxCluster]:
    skip_if(node_unavailable(real_node=False))
    box = BoxCluster(
        args=["--proxy", "kube-proxy", "--no-aviator", "--nodes", "1", "--zones", "2"]
    ).start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def api_server(kp_box: BoxCluster) -> BoxCluster:
    """`kube` and `namespace` on this module's box."""
    return kp_box


@pytest.fixture
async def apps(kp_box: BoxCluster, kube: KubeClient, namespace: str) -> AsyncIterator[Scenario]:
    async with deployed_quickstart(kp_box, kube, namespace) as scenario:
        yield scenario


@pytest.fixture
def in_box(kp_box: BoxCluster) -> Iterator[InBox]:
    opener = InBox(int(kp_box.status(fresh=True)["pid"]))
    try:
        yield opener
    finally:
        opener.close()


async def pod_ips(kube: KubeClient, ns: str) -> dict[str, str]:
    answer = await kube.list(PODS, ns, params={"labelSelector": "app=my-app"})
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in answer["items"]}


def endpoint(ip: str, pod: str, **conditions: bool) -> dict[str, Any]:
    return {
        "addresses": [ip],
        "conditions": {"ready": True, **conditions},
        "targetRef": {"kind": "Pod", "name": pod},
    }


def slice_of(
    name: str, endpoints: list[dict[str, Any]], port_name: str = "http", **extra: Any
) -> dict[str, Any]:
    labels = {LABEL_SERVICE_NAME: ROUTED, **extra.pop("labels", {})}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": 8080, "protocol": extra.pop("protocol", "TCP")}],
        "endpoints": endpoints,
    }


def routed_service() -> dict[str, Any]:
    """A Service without selector: only the slices a test writes serve it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": ROUTED},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


async def test_cluster_ip_reaches_only_the_slice_pods_and_follows_changes(
    apps: Scenario, in_box: InBox
) -> None:
    ips = await pod_ips(apps.kube, apps.ns)
    target = await cluster_ip(apps.kube, apps.ns, "my-app-service")
    await wait_for(
        "kube-proxy to spread my-app-service over its 4 pods",
        lambda: served(target, 60, in_box),
        lambda pods: pods == set(ips),
        timeout_s=30,
    )
    fast = sorted(p for p in ips if p.startswith("fast-app"))
    apps.apply(routed_service())
    apps.apply(slice_of(f"{ROUTED}-1", [endpoint(ips[p], p) for p in fast]))
    routed = await cluster_ip(apps.kube, apps.ns, ROUTED)
    await wait_for(
        "the ClusterIP to reach exactly the slice's two fast pods",
        lambda: served(routed, 40, in_box),
        lambda pods: pods == set(fast),
        timeout_s=30,
    )
    apps.apply(slice_of(f"{ROUTED}-1", [endpoint(ips[fast[0]], fast[0])]))
    await wait_for(
        "new connections to move to the one pod left in the slice",
        lambda: served(routed, 20, in_box),
        lambda pods: pods == {fast[0]},
        timeout_s=30,
    )
    for _ in range(3):  # and they stay there
        assert await served(routed, 20, in_box) == {fast[0]}
    # The box reads what kube-proxy's rules spread each Service over (benchmarks wait on it).
    kp_box = apps.cluster
    assert isinstance(kp_box, BoxCluster)

    async def counts() -> tuple[int, int]:
        return (
            kp_box.backend_count(apps.ns, ROUTED, kube_proxy=True),
            kp_box.backend_count(apps.ns, "my-app-service", kube_proxy=True),
        )

    await wait_for(
        "the box to read kube-proxy's rules", counts, lambda n: n == (1, len(ips)), timeout_s=10
    )


async def test_where_kube_proxy_and_the_box_proxy_differ(apps: Scenario, in_box: InBox) -> None:
    """The same slices, read by kube-proxy (ClusterIP) and by the box proxy (its host
    address): each case names the pods (by index in the sorted pod list) each serves."""
    ips = await pod_ips(apps.kube, apps.ns)
    pods = sorted(ips)
    ep = [endpoint(ips[p], p) for p in pods]
    apps.apply(routed_service())
    routed = await cluster_ip(apps.kube, apps.ns, ROUTED)

    async def via_box() -> set[str]:
        address = apps.cluster.address(apps.ns, ROUTED)
        return await served(address, 30) if address else {"failed"}

    async def via_zone() -> set[str]:
        address = apps.cluster.zone_address(ZONE, apps.ns, ROUTED)
        return await served(address, 30) if address else {"failed"}

    async def check(
        case: str,
        slices: list[dict[str, Any]],
        kube_proxy: set[int],
        box: set[int],
        zoned: set[int] | None = None,
    ) -> None:
        """`zoned`: what the box proxy's address for kube-proxy's zone serves (default:
        what `box` serves)."""
        names = {s["metadata"]["name"] for s in slices}
        existing = await apps.kube.list(
            ENDPOINTSLICES, apps.ns, params={"labelSelector": f"{LABEL_SERVICE_NAME}={ROUTED}"}
        )
        for old in existing["items"]:
            if old["metadata"]["name"] not in names:
                apps.kubectl("delete", "endpointslice", old["metadata"]["name"])
        for s in slices:
            apps.apply(s)
        want_kp = {pods[i] for i in kube_proxy} or {"failed"}
        want_box = {pods[i] for i in box} or {"failed"}
        await wait_for(
            f"{case}: kube-proxy serves {sorted(want_kp)}",
            lambda: served(routed, 30, in_box),
            lambda got: got == want_kp,
            timeout_s=20,
        )
        await wait_for(
            f"{case}: the box proxy serves {sorted(want_box)}",
            via_box,
            lambda got: got == want_box,
            timeout_s=20,
        )
        want_zone = {pods[i] for i in (box if zoned is None else zoned)} or {"failed"}
        await wait_for(
            f"{case}: the box proxy's {ZONE} address serves {sorted(want_zone)}",
            via_zone,
            lambda got: got == want_zone,
            timeout_s=20,
        )

    # Agreement first: two plain slices.
    await check(
        "two slices", [slice_of("kp-a", [ep[0]]), slice_of("kp-b", [ep[1]])], {0, 1}, {0, 1}
    )
    # 1. A slice port of another protocol under the same name: kube-proxy serves a TCP
    #    Service port only from TCP slice ports; the box proxy matches by name alone.
    await check(
        "UDP slice port",
        [slice_of("kp-a", [ep[0]]), slice_of("kp-b", [ep[1]], protocol="UDP")],
        kube_proxy={0},
        box={0, 1},
    )
    # 2. Zone hints: when every ready endpoint has one, kube-proxy serves only those
    #    hinted for its node's zone (box-a); the box proxy's zoneless address ignores
    #    hints (a node without a zone), its box-a address reads them as kube-proxy does.
    hinted = [
        {**ep[0], "hints": {"forZones": [{"name": ZONE}]}},
        {**ep[1], "hints": {"forZones": [{"name": "elsewhere"}]}},
    ]
    await check("zone hints", [slice_of("kp-a", hinted)], kube_proxy={0}, box={0, 1}, zoned={0})
    # ... and with one ready endpoint without hints, both ignore every hint.
    partial = [hinted[0], ep[1]]
    await check("partial zone hints", [slice_of("kp-a", partial)], {0, 1}, {0, 1})
    # ... and with no endpoint hinted for the zone, both use every endpoint.
    away = [{**e, "hints": {"forZones": [{"name": "elsewhere"}]}} for e in ep[:2]]
    await check("no endpoint for the zone", [slice_of("kp-a", away)], {0, 1}, {0, 1})
    # 3. Only terminating endpoints, `serving` left out: kube-proxy takes an absent
    #    `serving` as true and falls back to them; the box proxy wants `serving: true`.
    terminating = [
        endpoint(ips[pods[0]], pods[0], ready=False, terminating=True),
        endpoint(ips[pods[1]], pods[1], ready=False, serving=False, terminating=True),
    ]
    await check("terminating, serving absent", [slice_of("kp-a", terminating)], {0}, set())
    # 4. ... and with `serving: true`, both fall back to it.
    terminating[0]["conditions"]["serving"] = True
    await check("terminating, serving true", [slice_of("kp-a", terminating)], {0}, {0})
