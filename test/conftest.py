"""Shared fixtures: the real control plane, an API client, and a namespace per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import uvloop

from aviator.kube import KubeClient
from aviator.testing.controlplane import ControlPlane


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on uvloop, like the controller and the agent."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One real etcd + kube-apiserver + kube-controller-manager for the whole session."""
    with ControlPlane() as cp:
        yield cp


@pytest.fixture
async def kube(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = await KubeClient.load(str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods need it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl(
        "wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s"
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
