"""config/default is valid for a real API server, and its RBAC is least privilege.

Workloads are applied for real but their containers cannot run here (no kubelet);
what is checked is that every object is accepted and exists, and what the
controller's and the agent's ServiceAccounts may and may not do, by asking the real
authorizer (SubjectAccessReview, the API behind `kubectl auth can-i --as`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from aviator.api.crd import CRD_NAME
from aviator.api.types import GROUP, PLURAL
from aviator.kube import KubeClient
from aviator.kube.resources import SUBJECTACCESSREVIEWS
from aviator.testing.controlplane import AVIATOR_SERVICE_ACCOUNTS, ControlPlane

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The ServiceAccounts config/rbac binds (the box runs Aviator as them too).
CONTROLLER, AGENT = AVIATOR_SERVICE_ACCOUNTS

# (verb, group, resource, subresource, namespace); namespace "" = cluster-wide/any.
Request = tuple[str, str, str, str, str]

CONTROLLER_MUST = [
    *[(v, GROUP, PLURAL, "", "") for v in ("get", "list", "watch")],
    ("update", GROUP, PLURAL, "", "shop"),
    ("patch", GROUP, PLURAL, "", "shop"),
    ("update", GROUP, PLURAL, "status", "shop"),
    ("patch", GROUP, PLURAL, "status", "shop"),
    ("update", GROUP, PLURAL, "finalizers", "shop"),
    *[(v, "", r, "", "") for r in ("services", "pods", "nodes") for v in ("get", "list", "watch")],
    *[(v, "", "services", "", "shop") for v in ("create", "update", "patch", "delete")],
    *[
        (v, "discovery.k8s.io", "endpointslices", "", ns)
        for v in ("get", "list", "watch", "create", "update", "patch", "delete")
        for ns in ("", "shop")
    ],
    ("create", "events.k8s.io", "events", "", "shop"),
    ("create", "", "events", "", "shop"),
    ("delete", "", "endpoints", "", "shop"),
    ("create", "authentication.k8s.io", "tokenreviews", "", ""),
    ("create", "authorization.k8s.io", "subjectaccessreviews", "", ""),
    *[
        (v, "coordination.k8s.io", "leases", "", "aviator-system")
        for v in ("get", "create", "update")
    ],
    # The stream's certificate (a Secret) and CA (a ConfigMap); reading and updating
    # are limited to those two by name.
    ("create", "", "secrets", "", "aviator-system"),
    ("create", "", "configmaps", "", "aviator-system"),
]
CONTROLLER_MUST_NOT = [
    ("get", "", "secrets", "", "shop"),
    ("list", "", "secrets", "", ""),
    ("list", "", "secrets", "", "aviator-system"),
    ("get", "", "secrets", "", "aviator-system"),  # only aviator-stream-tls, by name
    ("create", "", "pods", "", "shop"),
    ("update", "", "pods", "", "shop"),
    ("delete", "", "pods", "", "shop"),
    ("patch", "", "pods", "status", "shop"),
    ("delete", "", "nodes", "", ""),
    ("update", "coordination.k8s.io", "leases", "", "kube-system"),
    ("create", "apps", "deployments", "", "shop"),
    ("update", "", "configmaps", "", "shop"),
    ("create", "", "endpoints", "", "shop"),
    ("update", "", "endpoints", "", "shop"),
    ("create", "", "serviceaccounts", "token", "aviator-system"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
    ("impersonate", "", "users", "", ""),
    ("delete", GROUP, PLURAL, "", "shop"),
    ("create", GROUP, PLURAL, "", "shop"),
]
AGENT_MUST = [
    *[(v, "", "pods", "", "") for v in ("get", "list", "watch")],
    *[(v, "", "services", "", "") for v in ("get", "list", "watch")],
    *[(v, GROUP, PLURAL, "", "") for v in ("get", "list", "watch")],
    *[(v, "discovery.k8s.io", "endpointslices", "", "aviator-system") for v in ("list", "watch")],
    # Who reads its /latency, /status, /metrics is checked with these.
    ("create", "authentication.k8s.io", "tokenreviews", "", ""),
    ("create", "authorization.k8s.io", "subjectaccessreviews", "", ""),
]
AGENT_MUST_NOT = [
    ("get", "", "secrets", "", "aviator-system"),
    ("list", "", "secrets", "", ""),
    *[
        (v, "discovery.k8s.io", "endpointslices", "", ns)
        for v in ("create", "update", "patch", "delete")
        for ns in ("", "shop", "aviator-system")
    ],
    ("list", "discovery.k8s.io", "endpointslices", "", "shop"),
    ("update", "", "pods", "", "shop"),
    ("patch", "", "pods", "status", "shop"),
    ("delete", "", "pods", "", "shop"),
    ("update", "", "services", "", "shop"),
    ("update", GROUP, PLURAL, "", "shop"),
    ("patch", GROUP, PLURAL, "status", "shop"),
    ("create", "coordination.k8s.io", "leases", "", "aviator-system"),
    ("create", "", "events", "", "shop"),
    ("list", "", "nodes", "", ""),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    """A private control plane: this module installs and removes cluster-wide objects."""
    with ControlPlane() as cp:
        yield cp


@pytest.fixture(scope="module")
def deployed(cluster: ControlPlane) -> ControlPlane:
    cluster.kubectl("apply", "-k", str(ROOT / "config/namespace"))
    dry = cluster.kubectl("apply", "-k", str(ROOT / "config/default"), "--dry-run=server")
    assert "(server dry run)" in dry.stdout
    cluster.kubectl("apply", "-k", str(ROOT / "config/default"))
    return cluster


def test_every_base_builds() -> None:
    import subprocess

    from aviator.testing.controlplane import binary

    for base in ("crd", "rbac", "manager", "agent", "default", "samples", "prometheus"):
        result = subprocess.run(
            [str(binary("kubectl")), "kustomize", str(ROOT / "config" / base)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"config/{base}: {result.stderr}"


def test_default_applies_and_every_object_exists(deployed: ControlPlane) -> None:
    built = deployed.kubectl("kustomize", str(ROOT / "config/default")).stdout
    listed = deployed.kubectl("get", "-f", "-", "-o", "name", input=built).stdout.split()
    expected = {
        "namespace/aviator-system",
        f"customresourcedefinition.apiextensions.k8s.io/{CRD_NAME}",
        "serviceaccount/aviator-controller",
        "serviceaccount/aviator-agent",
        "clusterrole.rbac.authorization.k8s.io/aviator-controller",
        "clusterrole.rbac.authorization.k8s.io/aviator-agent",
        "role.rbac.authorization.k8s.io/aviator-controller-leader-election",
        "deployment.apps/aviator-controller",
        "daemonset.apps/aviator-agent",
        "service/aviator-controller-stream",
        "service/aviator-controller-metrics",
        "poddisruptionbudget.policy/aviator-controller",
        "priorityclass.scheduling.k8s.io/aviator-agent",
        "role.rbac.authorization.k8s.io/aviator-controller-stream-tls",
        "clusterrole.rbac.authorization.k8s.io/aviator-metrics-reader",
        "networkpolicy.networking.k8s.io/aviator-controller",
    }
    assert expected <= set(listed)
    deployment = json.loads(
        deployed.kubectl(
            "get", "deployment", "aviator-controller", "-n", "aviator-system", "-o", "json"
        ).stdout
    )
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    agent = json.loads(
        deployed.kubectl(
            "get", "daemonset", "aviator-agent", "-n", "aviator-system", "-o", "json"
        ).stdout
    )
    caps = agent["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert {"BPF", "PERFMON", "NET_ADMIN"} <= set(caps["add"])
    assert caps["drop"] == ["ALL"]


async def _allowed(client: KubeClient, user: str, req: Request) -> bool:
    verb, group, resource, sub, ns = req
    attrs: dict[str, str] = {"verb": verb, "group": group, "resource": resource}
    if sub:
        attrs["subresource"] = sub
    if ns:
        attrs["namespace"] = ns
    groups = [
        "system:serviceaccounts",
        "system:serviceaccounts:aviator-system",
        "system:authenticated",
    ]
    review = await client.create(
        SUBJECTACCESSREVIEWS,
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": attrs},
        },
    )
    return bool(review["status"].get("allowed"))


@pytest.mark.parametrize(
    ("user", "must", "must_not"),
    [(CONTROLLER, CONTROLLER_MUST, CONTROLLER_MUST_NOT), (AGENT, AGENT_MUST, AGENT_MUST_NOT)],
    ids=["controller", "agent"],
)
async def test_rbac_is_least_privilege(
    deployed: ControlPlane, user: str, must: list[Request], must_not: list[Request]
) -> None:
    async with await KubeClient.load(str(deployed.kubeconfig)) as client:
        denied = [r for r in must if not await _allowed(client, user, r)]
        allowed = [r for r in must_not if await _allowed(client, user, r)]
    assert not denied, f"{user} needs these but is denied: {denied}"
    assert not allowed, f"{user} must not be allowed: {allowed}"


def test_undeploy_removes_everything(deployed: ControlPlane) -> None:
    deployed.kubectl("delete", "-k", str(ROOT / "config/default"), "--wait=true", "--timeout=120s")
    left = deployed.kubectl("get", "namespace", "aviator-system", check=False)
    assert left.returncode != 0 or "Terminating" in left.stdout
