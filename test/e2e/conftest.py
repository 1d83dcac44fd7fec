"""E2E fixtures: one cluster for the session (the box by default, Kind with
E2E_CLUSTER=kind), and a namespace per test holding the quick-start apps. `kube` and
`namespace` are test/conftest.py's, pointed at this cluster through `api_server`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e_cluster import BoxCluster, Cluster, KindCluster, box_unavailable
from e2e_scenario import Scenario, deployed_quickstart

from aviator.kube.client import KubeClient


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    kind = os.environ.get("E2E_CLUSTER", "box")
    if kind == "kind":
        reason = KindCluster.unavailable()
        if reason:
            pytest.skip(reason)
        kind_cluster = KindCluster().start()
        try:
            yield kind_cluster
        finally:
            kind_cluster.stop()
        return
    reason = box_unavailable()
    if reason:
        pytest.skip(reason)
    reuse = os.environ.get("E2E_BOX_WORKDIR")
    box = BoxCluster(Path(reuse) if reuse else None).start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def aviator_cluster(cluster: Cluster) -> Cluster:
    """The cluster, with Aviator's controller and agents running; fails (not skips)
    with the reason otherwise, so a missing component is visible. The agents are not
    needed when E2E_LATENCY_SOURCE=probe (policies then use the controller's probes)."""
    if isinstance(cluster, BoxCluster):
        reason = cluster.aviator_ready()
        if reason:
            pytest.fail(f"Aviator is not runnable in the box: {reason}")
    return cluster


@pytest.fixture(scope="session")
def api_server(cluster: Cluster) -> Cluster:
    return cluster


@pytest.fixture
async def quickstart(
    aviator_cluster: Cluster, kube: KubeClient, namespace: str
) -> AsyncIterator[Scenario]:
    """fast-app (2 x 10 ms), slow-app (2 x 500 ms) and my-app-service, all Ready."""
    async with deployed_quickstart(aviator_cluster, kube, namespace) as scenario:
        yield scenario


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The RBAC audit check reads what the other e2e tests made Aviator do: run it right
    after the last of them (not at the very end, so the box is not kept up longer)."""
    here = Path(__file__).parent
    last = [i for i in items if i.path.name == "test_e2e_rbac.py"]
    rest = [i for i in items if i not in last]
    e2e = [n for n, i in enumerate(rest) if here in i.path.parents]
    at = e2e[-1] + 1 if e2e else len(rest)
    items[:] = rest[:at] + last + rest[at:]
