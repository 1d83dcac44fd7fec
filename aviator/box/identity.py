"""ServiceAccount identities in the box, as a cluster gives them to pods.

The controller and the agents run as their own ServiceAccounts under the RBAC of
config/rbac (a missing permission shows in the box as it would in a cluster). Each gets
a kubeconfig whose token file is refreshed before it expires; an agent's stream token is
bound to its Node, as a real agent's projected token is bound to its pod, so the
controller learns the node from the token and never from the agent's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import yaml

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import NODES, SERVICEACCOUNTS

AVIATOR_NAMESPACE = "aviator-system"
AGENT_SERVICE_ACCOUNT = "aviator-agent"
CONTROLLER_SERVICE_ACCOUNT = "aviator-controller"
TOKEN_AUDIENCES = ["aviator", "https://kubernetes.default.svc.cluster.local"]
TOKEN_TTL_S = 24 * 3600


class ServiceAccountTokens:
    """Issues TokenRequests for Aviator's ServiceAccounts into files under `workdir`
    and keeps them fresh (each file is refreshed at 80 % of its lifetime by a task
    appended to `tasks`, which the owner cancels)."""

    def __init__(
        self,
        client: KubeClient,
        workdir: Path,
        admin_kubeconfig: Path,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        self.client = client
        self.workdir = workdir
        self.admin_kubeconfig = admin_kubeconfig
        self.tasks = tasks

    async def kubeconfig(self, service_account: str) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount with a token file that
        is refreshed before it expires."""
        token_file = self.workdir / f"{service_account}.token"
        await self._keep_fresh(service_account, token_file, None)
        config = yaml.safe_load(self.admin_kubeconfig.read_text())
        config["users"] = [{"name": service_account, "user": {"tokenFile": str(token_file)}}]
        config["contexts"][0]["context"]["user"] = service_account
        path = self.workdir / f"{service_account}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    async def node_token(self, service_account: str, node: str) -> Path:
        """A token file of the ServiceAccount bound to the Node `node`, kept fresh."""
        uid = (await self.client.get(NODES, node))["metadata"]["uid"]
        bound = {"kind": "Node", "apiVersion": "v1", "name": node, "uid": uid}
        path = self.workdir / f"{service_account}-{node}.token"
        await self._keep_fresh(service_account, path, bound)
        return path

    async def _keep_fresh(
        self, service_account: str, path: Path, bound: dict[str, str] | None
    ) -> None:
        await self._write(service_account, path, bound)
        self.tasks.append(asyncio.create_task(self._refresh(service_account, path, bound)))

    async def _write(self, service_account: str, path: Path, bound: dict[str, str] | None) -> None:
        spec: dict[str, Any] = {"audiences": TOKEN_AUDIENCES, "expirationSeconds": TOKEN_TTL_S}
        if bound is not None:
            spec["boundObjectRef"] = bound
        answer = await self.client.request(
            "POST",
            SERVICEACCOUNTS.path(AVIATOR_NAMESPACE, service_account, "token"),
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(answer["status"]["token"])
        tmp.chmod(0o600)
        os.replace(tmp, path)

    async def _refresh(
        self, service_account: str, path: Path, bound: dict[str, str] | None
    ) -> None:
        while True:
            await asyncio.sleep(TOKEN_TTL_S * 0.8)
            with contextlib.suppress(ApiError, OSError, TimeoutError):
                await self._write(service_account, path, bound)
