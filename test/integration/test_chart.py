"""The Helm chart (charts/aviator): equal to config/default for default values, the
values users set end up where they should, `helm lint` passes, and what it renders
is accepted by a real API server (server-side dry run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from manifests_support import (
    CHART,
    ROOT,
    differences,
    helm,
    helm_template,
    kustomize,
    objects,
    run,
    unlabelled,
)

from aviator import __version__
from aviator.api.crd import CRD_FILE_NAME
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

CUSTOM: dict[str, object] = {
    "controller": {
        "image": {"repository": "registry.example/aviator-controller", "tag": "v9.9.9"},
        "replicas": 3,
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "extraArgs": ["--workers=8"],
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    },
    "agent": {
        "image": {"repository": "registry.example/aviator-agent", "tag": "v9.9.9"},
        "latencySource": "probe",
        "resources": {"limits": {"memory": "2Gi"}},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "priorityClass": {"create": False, "name": "system-node-critical"},
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
    },
}


@pytest.fixture(scope="module")
def custom_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "values.yaml"
    path.write_text(yaml.safe_dump(CUSTOM))
    return path


def test_defaults_render_exactly_config_default() -> None:
    chart = objects(helm_template())
    assert not differences(objects(kustomize("default")), chart), "\n".join(
        differences(objects(kustomize("default")), chart)
    )


def test_monitors_render_exactly_config_prometheus() -> None:
    chart = objects(
        helm_template(
            "--show-only",
            "templates/monitoring.yaml",
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,"
            "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
        )
    )
    found = differences(objects(kustomize("prometheus")), chart)
    assert not found, "\n".join(found)


def test_external_metrics_render_exactly_config_external_metrics() -> None:
    chart = objects(
        helm_template(
            "--show-only",
            "templates/external-metrics.yaml",
            "--set",
            "externalMetrics.enabled=true",
        )
    )
    found = differences(objects(kustomize("external-metrics")), chart)
    assert not found, "\n".join(found)


def test_crd_is_the_generated_file() -> None:
    """One CRD file: the chart links to it, it holds no copy that could drift."""
    link = CHART / "files" / "aviatorpolicies.yaml"
    generated = ROOT / "config" / "crd" / "bases" / CRD_FILE_NAME
    assert link.is_symlink() and link.resolve() == generated.resolve()
    copies = [p for p in CHART.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in copies if "CustomResourceDefinition" in p.read_text()]
    (crd,) = [
        o for o in objects(helm_template()).values() if o["kind"] == "CustomResourceDefinition"
    ]
    assert crd["spec"] == yaml.safe_load(generated.read_text())["spec"]


def test_every_object_has_the_recommended_labels() -> None:
    for rendered in (
        objects(helm_template()),
        objects(
            helm_template(
                "--set",
                "metrics.podMonitor.enabled=true,metrics.serviceMonitor.enabled=true,"
                "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
            )
        ),
        objects(kustomize("default")),
        objects(kustomize("prometheus")),
        objects(kustomize("external-metrics")),
    ):
        assert not unlabelled(rendered), unlabelled(rendered)
        versions = {o["metadata"]["labels"]["app.kubernetes.io/version"] for o in rendered.values()}
        assert versions == {__version__}


def test_the_labels_test_sees_every_shipped_object() -> None:
    """Every object a file under config/ defines (samples aside: they are the user's)
    is in config/default, config/prometheus or config/external-metrics, the renderings
    checked for labels above:
    an object added to a file but to no kustomization would escape that check."""
    checked = {
        (o["kind"], o["metadata"]["name"])
        for base in ("default", "prometheus", "external-metrics")
        for o in objects(kustomize(base)).values()
    }
    defined = {
        (doc["kind"], doc["metadata"]["name"])
        for path in (ROOT / "config").rglob("*.yaml")
        if path.name != "kustomization.yaml" and "samples" not in path.parts
        for doc in yaml.safe_load_all(path.read_text())
        if doc and "kind" in doc
    }
    assert defined and defined <= checked, defined - checked


def test_chart_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__


def test_values_users_set_land_where_they_should(custom_values: Path) -> None:
    rendered = objects(helm_template("--values", str(custom_values)))
    by_kind = {(k[1], k[3]): o for k, o in rendered.items()}
    deploy = by_kind[("Deployment", "aviator-controller")]
    pod = deploy["spec"]["template"]["spec"]
    (ctl,) = pod["containers"]
    assert deploy["spec"]["replicas"] == 3
    assert ctl["image"] == "registry.example/aviator-controller:v9.9.9"
    assert ctl["resources"] == CUSTOM["controller"]["resources"]  # type: ignore[index]
    assert ctl["args"][-1] == "--workers=8"
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == CUSTOM["controller"]["tolerations"]  # type: ignore[index]
    assert pod["priorityClassName"] == "system-cluster-critical"
    agent = by_kind[("DaemonSet", "aviator-agent")]["spec"]["template"]["spec"]
    (ag,) = agent["containers"]
    assert ag["image"] == "registry.example/aviator-agent:v9.9.9"
    assert "--latency-source=probe" in ag["args"]
    # Helm merges maps: the default requests stay under the limit set here.
    assert ag["resources"] == {
        "requests": {"cpu": "50m", "memory": "256Mi"},
        "limits": {"memory": "2Gi"},
    }
    assert agent["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert agent["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert agent["priorityClassName"] == "system-node-critical"
    assert ("PriorityClass", "aviator-agent") not in by_kind  # an existing class is used
    monitor = by_kind[("ServiceMonitor", "aviator-controller")]
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert ("PodMonitor", "aviator-agent") in by_kind


def test_namespace_value_moves_every_namespaced_object() -> None:
    rendered = objects(
        helm_template(
            "--set",
            "namespace.name=ops,namespace.create=false,"
            "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
        )
    )
    assert not [k for k in rendered if k[1] == "Namespace"]
    namespaces = {k[2] for k in rendered} - {""}
    assert namespaces == {"ops"}
    text = yaml.safe_dump_all(rendered.values())
    assert "aviator-system" not in text  # flags that name the namespace follow it too
    # The controller's certificate names the stream Service in its own namespace: the
    # agents and the ServiceMonitor check that name (their defaults say aviator-system).
    by_kind = {(k[1], k[3]): o for k, o in rendered.items()}
    agent = by_kind[("DaemonSet", "aviator-agent")]["spec"]["template"]["spec"]
    assert (
        "--controller-server-name=aviator-controller-stream.ops.svc"
        in (agent["containers"][0]["args"])
    )
    (endpoint,) = by_kind[("ServiceMonitor", "aviator-controller")]["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["serverName"] == "aviator-controller-stream.ops.svc"


def test_network_policy_and_monitor_token_values() -> None:
    rendered = objects(
        helm_template(
            "--set",
            "controller.networkPolicy.enabled=false,metrics.podMonitor.enabled=true,"
            "metrics.podMonitor.tokenSecret.name=scraper,metrics.podMonitor.tokenSecret.key=t",
        )
    )
    assert not [k for k in rendered if k[1] == "NetworkPolicy"]
    (monitor,) = [o for k, o in rendered.items() if k[1] == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "scraper", "key": "t"},
    }


def test_helm_lint(custom_values: Path) -> None:
    run([helm(), "lint", "--strict", str(CHART)])
    run([helm(), "lint", "--strict", str(CHART), "--values", str(custom_values)])


@pytest.mark.parametrize("values", ["defaults", "custom"])
def test_server_side_dry_run(
    control_plane: ControlPlane, namespace: str, custom_values: Path, values: str
) -> None:
    """Every object the chart renders is accepted by the real API server (admission,
    schema, RBAC object validation). Rendered into the test's namespace, which exists
    (a dry run creates nothing, so namespaced objects need a real namespace)."""
    args = ["--set", f"namespace.name={namespace}"]
    if values == "custom":
        # ServiceMonitor/PodMonitor need the Prometheus Operator's CRDs, not served here.
        args += [
            "--values",
            str(custom_values),
            "--set",
            "metrics.serviceMonitor.enabled=false,metrics.podMonitor.enabled=false",
        ]
    rendered = helm_template(*args)
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(objects(rendered))
    assert all("(server dry run)" in line for line in lines), result.stdout


def test_helm_install_server_dry_run(control_plane: ControlPlane, namespace: str) -> None:
    """`helm install --dry-run=server`: Helm's own install path against the real API
    server (the namespace exists, so the chart does not create it; the CRD may be
    installed by other tests of this session, so it is left out here, and is
    dry-run above), and the release notes. Cluster-wide objects of the same names
    (ClusterRoles, the PriorityClass) may also be left by other tests' installs of
    config/default: `--take-ownership` lets Helm's check pass over them (a dry run
    changes nothing)."""
    out = run(
        [
            helm(),
            "install",
            "aviator-dry-run",
            str(CHART),
            "--dry-run=server",
            "--take-ownership",
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "--namespace",
            namespace,
            "--set",
            f"namespace.create=false,namespace.name={namespace},crds.install=false",
        ]
    )
    assert "STATUS: pending-install" in out
    assert "kubectl aviator status -A" in out and "kubectl delete avp --all -A --wait" in out
