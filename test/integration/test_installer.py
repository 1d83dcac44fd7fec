"""dist/install.yaml (`make build-installer`): config/default in one file with the
images given, applied to a real API server; every object is accepted and exists, and
a policy routes with the controller running under the identity and RBAC the file
installs (no kubelet here: the controller runs in-process as that ServiceAccount)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from integration_support import (
    create_policy,
    create_service_and_pods,
    endpoint_pods,
    eventually,
    get_policy,
    request_token,
    running_controller,
    slices_of,
)
from manifests_support import ROOT, differences, kustomize, objects, unlabelled

from aviator.api.crd import CRD_NAME
from aviator.kube import KubeClient
from aviator.testing.controlplane import ControlPlane, binary

pytestmark = pytest.mark.integration

NAMESPACE = "aviator-system"
IMG = "registry.example:5000/team/aviator-controller:v1.2.3"
AGENT_IMG = "registry.example:5000/team/aviator-agent:v1.2.3"


@pytest.fixture(scope="module")
def installer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "install.yaml"
    subprocess.run(
        ["bash", str(ROOT / "hack" / "build-installer.sh"), str(out)],
        check=True,
        capture_output=True,
        env={
            "IMG": IMG,
            "AGENT_IMG": AGENT_IMG,
            "KUBECTL": str(binary("kubectl")),
            "PATH": "/usr/bin:/bin",
        },
    )
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    """A private control plane: the installer creates cluster-wide objects."""
    with ControlPlane() as cp:
        yield cp


@pytest.fixture(scope="module")
def installed(cluster: ControlPlane, installer: Path) -> ControlPlane:
    cluster.kubectl("apply", "--server-side", "-f", str(installer))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=120s")
    return cluster


def test_installer_is_config_default_with_the_images(installer: Path) -> None:
    built = objects(installer.read_text())
    expected = objects(kustomize("default"))
    for obj in expected.values():
        for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            c["image"] = {"aviator-controller:latest": IMG, "aviator-agent:latest": AGENT_IMG}[
                c["image"]
            ]
    found = differences(expected, built)
    assert not found, "\n".join(found)
    assert not unlabelled(built)


def test_every_object_is_accepted_and_exists(installed: ControlPlane, installer: Path) -> None:
    built = objects(installer.read_text())
    listed = installed.kubectl("get", "-f", str(installer), "-o", "json").stdout
    items = json.loads(listed)["items"]
    found = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in items}
    assert found == {(k[1], k[2], k[3]) for k in built}
    deploy = next(o for o in items if o["kind"] == "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == IMG


async def test_a_policy_routes_under_the_installed_identity(
    installed: ControlPlane, tmp_path: Path
) -> None:
    async with await KubeClient.load(str(installed.kubeconfig)) as admin:
        token = await request_token(admin, NAMESPACE, "aviator-controller")
        config = yaml.safe_load(installed.kubeconfig.read_text())
        config["users"] = [{"name": "aviator-controller", "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = "aviator-controller"
        kubeconfig = tmp_path / "aviator-controller.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        installed.kubectl("create", "namespace", "shop")
        installed.kubectl(
            "wait", "--for=create", "serviceaccount/default", "-n", "shop", "--timeout=60s"
        )
        pods = {"web-1": "10.30.0.1", "web-2": "10.30.0.2"}
        await create_service_and_pods(admin, "shop", "web", {"app": "web"}, pods)
        async with running_controller(kubeconfig, NAMESPACE):
            await create_policy(admin, "shop", "p", "web", evaluationInterval="500ms")

            async def routing() -> bool:
                policy = await get_policy(admin, "shop", "p") or {}
                conditions = (policy.get("status") or {}).get("conditions") or []
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
                served = endpoint_pods(await slices_of(admin, "shop", "web-aviator", ours=True))
                return ready and served == sorted(pods)

            await eventually(routing)
