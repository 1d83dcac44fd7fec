"""Latency for autoscaling, end to end: the real HPA controller (kube-controller-manager)
scales a Deployment of the box on its Service's p99, read from the external metrics API
the Aviator controller serves (box `--external-metrics`: config/external-metrics, the
APIService routed to the controller). Its pods turn slow → the p99 passes the HPA's
target → more replicas; they recover → back to the minimum. The replica count and the
p99 over time go to a PNG (`$AVIATOR_AUTOSCALING_PNG`, else the test's directory;
docs/autoscaling.png is one run)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_cluster import REPO, BoxCluster
from e2e_scenario import Scenario, wait_for

from aviator.controller.extmetrics import BASE_PATH
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import DEPLOYMENTS, PODS

pytestmark = pytest.mark.e2e

APP = "hpa-app"
SERVICE = "hpa-svc"
METRIC = "aviator_service_p99_ms"
TARGET_MS = 100
MIN, MAX = 2, 4
FUNCTIONAL = REPO / "test" / "functional"


@pytest.fixture(scope="module")
def hpa_box() -> Iterator[BoxCluster]:
    if os.geteuid() != 0:
        pytest.skip("the box needs root (it creates its own network namespace)")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        if not (REPO / "bin" / name).exists():
            pytest.skip(f"bin/{name} is missing: run `make controlplane`")
    box = BoxCluster(args=["--external-metrics", "--nodes", "1"]).start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def api_server(hpa_box: BoxCluster) -> BoxCluster:
    """`kube` and `namespace` on this module's box."""
    return hpa_box


def deployment() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((FUNCTIONAL / "fast-app.yaml").read_text())
    labels = {"app": APP}
    doc["metadata"] = {"name": APP, "labels": labels}
    doc["spec"]["replicas"] = MIN
    doc["spec"]["selector"] = {"matchLabels": labels}
    doc["spec"]["template"]["metadata"]["labels"] = labels
    return doc


def hpa() -> dict[str, Any]:
    """docs/autoscaling.md's HPA, with short windows for a test."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": APP},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
            "minReplicas": MIN,
            "maxReplicas": MAX,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": METRIC,
                            "selector": {"matchLabels": {"service": SERVICE}},
                        },
                        "target": {"type": "Value", "value": str(TARGET_MS)},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {
                    "stabilizationWindowSeconds": 10,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
                },
            },
        },
    }


class Recorder:
    """The Deployment's replicas and the metric the HPA last read, every second."""

    def __init__(self, kube: KubeClient, ns: str) -> None:
        self.kube = kube
        self.ns = ns
        self.start = time.monotonic()
        self.rows: list[tuple[float, int, float | None]] = []  # (s, replicas, p99 ms)
        self.marks: list[tuple[float, str]] = []
        self._task: asyncio.Task[None] | None = None

    def mark(self, what: str) -> None:
        self.marks.append((time.monotonic() - self.start, what))

    async def replicas(self) -> int:
        return int((await self.kube.get(DEPLOYMENTS, APP, self.ns))["spec"]["replicas"])

    async def p99(self) -> float | None:
        """What an HPA reads (None: no value, or the API not answering yet)."""
        try:
            status = await self.kube.request(
                "GET",
                f"{BASE_PATH}/namespaces/{self.ns}/{METRIC}",
                params={"labelSelector": f"service={SERVICE}"},
            )
        except ApiError:
            return None
        items = status.get("items") or []
        if not items:
            return None
        value = str(items[0]["value"])
        return int(value[:-1]) / 1000 if value.endswith("m") else float(value)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(ApiError, OSError):
                self.rows.append(
                    (time.monotonic() - self.start, await self.replicas(), await self.p99())
                )
            await asyncio.sleep(1.0)  # a sample per second is the recording's resolution

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Recorder]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def plot(self, out: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, left = plt.subplots(figsize=(9, 4))
        t = [r[0] for r in self.rows]
        left.step(t, [r[1] for r in self.rows], where="post", color="tab:blue", label="replicas")
        left.set_ylim(0, MAX + 1)
        left.set_xlabel("seconds")
        left.set_ylabel("replicas (Deployment spec)")
        right = left.twinx()
        right.plot(
            t,
            [r[2] if r[2] is not None else float("nan") for r in self.rows],
            color="tab:red",
            label=f"{METRIC} (external metrics API)",
        )
        right.axhline(TARGET_MS, color="tab:red", linestyle=":", label=f"HPA target {TARGET_MS} ms")
        right.set_yscale("log")
        right.set_ylabel("p99, ms")
        for at, what in self.marks:
            left.axvline(at, color="grey", linestyle="--")
            left.annotate(what, (at, MAX + 0.6), fontsize=8, rotation=0)
        lines = left.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        left.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
        left.set_title("An HPA scaling a Deployment on its Service's p99 (Aviator, box)")
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)


async def ready_pods(kube: KubeClient, ns: str) -> list[str]:
    answer = await kube.list(PODS, ns, params={"labelSelector": f"app={APP}"})
    return sorted(
        p["metadata"]["name"]
        for p in answer.get("items", [])
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    )


async def test_the_hpa_scales_up_on_p99_and_back_down_when_it_recovers(
    hpa_box: BoxCluster, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    apps = Scenario(hpa_box, kube, namespace)
    apps.apply(deployment())
    apps.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE},
            "spec": {
                "selector": {"app": APP},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        }
    )
    apps.apply(apps.policy("hpa-policy", targetRef={"kind": "Service", "name": SERVICE}))
    await wait_for(
        f"{MIN} ready pods", lambda: ready_pods(kube, namespace), lambda p: len(p) == MIN, 90
    )
    recorder = Recorder(kube, namespace)
    try:
        async with recorder.running():
            apps.load(SERVICE, concurrency=4)
            await wait_for(
                "the p99 through the external metrics API",
                recorder.p99,
                lambda v: v is not None and v < TARGET_MS,
                60,
            )
            apps.apply(hpa())
            recorder.mark("HPA")

            async def hpa_status() -> dict[str, Any]:
                status = await kube.request(
                    "GET",
                    f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{APP}",
                )
                return dict(status.get("status") or {})

            await wait_for(
                "the HPA to read the metric",
                hpa_status,
                lambda s: any(
                    c["type"] == "ScalingActive" and c["status"] == "True"
                    for c in s.get("conditions") or []
                ),
                60,
            )
            assert await recorder.replicas() == MIN  # fast: nothing to scale

            # Slow pods: p99 ~ 3 x target, the HPA asks for 3 x the replicas (capped).
            slowed = await ready_pods(kube, namespace)
            for pod in slowed:
                hpa_box.set_pod_latency(namespace, pod, "300ms")
            recorder.mark("pods slow")
            _, up_s = await wait_for(f"{MAX} replicas", recorder.replicas, lambda n: n == MAX, 90)
            await wait_for(
                f"{MAX} ready pods",
                lambda: ready_pods(kube, namespace),
                lambda p: len(p) == MAX,
                90,
            )

            # Recovered: p99 ~ 10 ms, far under target: back to the minimum.
            for pod in slowed:
                hpa_box.set_pod_latency(namespace, pod, None)
            recorder.mark("recovered")
            _, down_s = await wait_for(
                f"{MIN} replicas", recorder.replicas, lambda n: n == MIN, 120
            )
            await asyncio.sleep(3)  # a few more rows for the picture
    finally:
        await apps.close()
        out = Path(os.environ.get("AVIATOR_AUTOSCALING_PNG") or tmp_path / "autoscaling.png")
        if recorder.rows:
            recorder.plot(out)
        print(f"replicas over time: {out}")
    print(f"scaled up to {MAX} in {up_s:.0f} s, back to {MIN} in {down_s:.0f} s")
    highest = max(r[2] or 0 for r in recorder.rows)
    assert highest > TARGET_MS, recorder.rows
