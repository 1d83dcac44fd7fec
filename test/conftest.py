"""Shared fixtures: the real control plane, an API client, and a namespace per test.

`kube` and `namespace` work on whatever `api_server` is: the local control plane here;
the e2e suite overrides `api_server` with its cluster."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol

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


class ApiServer(Protocol):
    """What `kube` and `namespace` need of a cluster (ControlPlane and the e2e clusters)."""

    kubeconfig: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture(scope="session")
def api_server(control_plane: ControlPlane) -> ApiServer:
    return control_plane


@pytest.fixture
async def kube(api_server: ApiServer) -> AsyncIterator[KubeClient]:
    async with await KubeClient.load(str(api_server.kubeconfig)) as client:
        yield client


@pytest.fixture
def namespace(api_server: ApiServer) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods need it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    api_server.kubectl("create", "namespace", name)
    api_server.kubectl(
        "wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s"
    )
    yield name
    api_server.kubectl("delete", "namespace", name, "--wait=false", check=False)
