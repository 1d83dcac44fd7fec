"""The external metrics API against the real API server's aggregation layer: the
APIService of config/external-metrics routes external.metrics.k8s.io/v1beta1 to an
in-process controller (an ExternalName Service naming 127.0.0.1), the controller gives
it its CA, and a Service's latency, streamed by an agent, is read through the API
server as an HPA reads it; who may read is the API server's RBAC, checked again by the
controller (front-proxy certificate or bearer token, then a SubjectAccessReview)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import aiohttp
import pytest
import yaml
from integration_support import (
    NODE,
    TestAgent,
    create_policy,
    create_service_and_pods,
    eventually,
    pod_token,
    request_token,
    running_controller,
    stream_tls,
    stream_url,
)

from aviator.controller.app import ControllerApp
from aviator.controller.extmetrics import APISERVICE_NAME, BASE_PATH
from aviator.kube import ApiError, KubeClient
from aviator.kube.resources import APISERVICES, SERVICEACCOUNTS, SERVICES
from aviator.latency.tls import client_context, load_chain
from aviator.pki import Authority
from aviator.testing.controlplane import ControlPlane, binary

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).resolve().parents[2] / "config" / "external-metrics"
P99 = "aviator_service_p99_ms"


def config_objects() -> list[dict[str, Any]]:
    return [
        doc
        for name in ("apiservice.yaml", "rbac.yaml")
        for doc in yaml.safe_load_all((CONFIG / name).read_text())
        if doc
    ]


@contextlib.asynccontextmanager
async def registered(kube: KubeClient, ns: str) -> AsyncIterator[dict[str, Any]]:
    """config/external-metrics' APIService, routed to `ns`'s Service (the controller's
    namespace here), for the duration of the block."""
    (apiservice,) = [o for o in config_objects() if o["kind"] == "APIService"]
    apiservice["spec"]["service"]["namespace"] = ns
    with contextlib.suppress(ApiError):
        await kube.delete(APISERVICES, APISERVICE_NAME)
    yield apiservice
    with contextlib.suppress(ApiError):
        await kube.delete(APISERVICES, APISERVICE_NAME)


async def through_api_server(cp: ControlPlane, path: str, *as_user: str) -> tuple[int, Any]:
    """GET `path` through the API server with kubectl (as `as_user`, impersonated, when
    given); asynchronously: the controller answering runs on this event loop."""
    args = ["--kubeconfig", str(cp.kubeconfig), "get", "--raw", path]
    if as_user:
        args += ["--as", as_user[0]]
    proc = await asyncio.create_subprocess_exec(
        str(binary("kubectl")), *args, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode != 0:
        return 1, err.decode()
    return 0, json.loads(out)


def direct_tls(app: ControllerApp, ns: str) -> dict[str, Any]:
    assert app.stream_ca is not None
    return {"ssl": client_context(app.stream_ca), "server_hostname": f"{METRICS}.{ns}.svc"}


METRICS = "aviator-controller-metrics"


async def test_an_hpa_reads_a_services_p99_through_the_aggregation_layer(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    ns = namespace
    await create_service_and_pods(
        kube, ns, "web", {"app": "web"}, {"web-a": "10.93.0.1", "web-b": "10.93.0.2"}
    )
    await create_service_and_pods(kube, ns, "idle", {"app": "idle"}, {"idle-a": "10.93.0.9"})
    await create_policy(kube, ns, "web", "web")
    async with registered(kube, ns) as apiservice:
        # The controller's Service: on loopback here, any replica in a cluster.
        await kube.create(
            SERVICES,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": METRICS},
                "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
            },
            ns,
        )
        async with running_controller(control_plane, ns, secure_serving=True) as app:
            apiservice["spec"]["service"]["port"] = app.http_port
            await kube.create(APISERVICES, apiservice)
            # A replica gives the APIService its CA (here: at once, as at start-up).
            await app._aggregation(app.certs.context)  # type: ignore[union-attr,arg-type]
            assert app.stream_ca is not None and app.metrics_api.front_proxy is not None
            held = await kube.get(APISERVICES, APISERVICE_NAME)
            assert base64.b64decode(held["spec"]["caBundle"]) == app.stream_ca

            async def available() -> bool:
                status = (await kube.get(APISERVICES, APISERVICE_NAME)).get("status") or {}
                return any(
                    c["type"] == "Available" and c["status"] == "True"
                    for c in status.get("conditions") or []
                )

            await eventually(available, within=60)

            token = await pod_token(kube, ns, NODE)
            async with TestAgent(stream_url(app), token, tls=stream_tls(app)) as agent:
                agent.latency_ms = {"10.93.0.1": 12.0, "10.93.0.2": 40.0}
                path = f"{BASE_PATH}/namespaces/{ns}/{P99}?labelSelector=service%3Dweb"

                async def read() -> Any:
                    code, body = await through_api_server(control_plane, path)
                    return body if code == 0 and body["items"] else None

                body = await eventually(read)
                assert body["kind"] == "ExternalMetricValueList"
                (item,) = body["items"]
                assert item["metricName"] == P99
                assert item["metricLabels"] == {"service": "web", "policy": "web"}
                # The merged p99 of both pods' requests is the slower pod's latency
                # (within the histogram's 1/32).
                value = float(item["value"].rstrip("m")) / (1000 if "m" in item["value"] else 1)
                assert 40 * (1 - 1 / 32) <= value <= 40 * (1 + 1 / 32)

                # Discovery through the aggregator lists the metrics.
                code, listing = await through_api_server(control_plane, BASE_PATH)
                assert code == 0 and P99 in {r["name"] for r in listing["resources"]}
                # A Service no policy targets: no item (the HPA keeps its replicas).
                idle = f"{BASE_PATH}/namespaces/{ns}/{P99}?labelSelector=service%3Didle"
                assert (await through_api_server(control_plane, idle))[1]["items"] == []
                # Unknown metric: 404 from the controller, through the aggregator.
                code, err = await through_api_server(
                    control_plane, f"{BASE_PATH}/namespaces/{ns}/aviator_nope"
                )
                assert code == 1 and "(NotFound): no external metric" in err, err

                # RBAC: a ServiceAccount may read once bound to the reader ClusterRole.
                await kube.create(
                    SERVICEACCOUNTS,
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "hpa"}},
                    ns,
                )
                user = f"system:serviceaccount:{ns}:hpa"
                code, err = await through_api_server(control_plane, path, user)
                assert code == 1 and "forbidden" in err.lower()
                (reader_role,) = [
                    o
                    for o in config_objects()
                    if o["kind"] == "ClusterRole" and "reader" in o["metadata"]["name"]
                ]
                control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(reader_role))
                control_plane.kubectl(
                    "create",
                    "rolebinding",
                    "hpa-reads-metrics",
                    "-n",
                    ns,
                    "--clusterrole=aviator-external-metrics-reader",
                    f"--serviceaccount={ns}:hpa",
                )

                async def allowed() -> Any:
                    code, body = await through_api_server(control_plane, path, user)
                    return body if code == 0 else None

                assert (await eventually(allowed))["items"][0]["metricLabels"]["service"] == "web"

                # Directly to the controller: a bearer token works the same way...
                reader = await request_token(kube, ns, "hpa")
                async with aiohttp.ClientSession() as http:
                    url = f"https://127.0.0.1:{app.http_port}{path}"
                    tls = direct_tls(app, ns)
                    auth = {"Authorization": f"Bearer {reader}"}
                    async with http.get(url, headers=auth, **tls) as resp:
                        assert resp.status == 200
                        assert (await resp.json())["items"][0]["metricName"] == P99
                    # ... no credentials, or front-proxy headers without its certificate,
                    # are nobody.
                    for headers in (
                        {},
                        {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"},
                    ):
                        async with http.get(url, headers=headers, **tls) as resp:
                            assert resp.status == 401
                    # A client certificate from another CA: no TLS session at all.
                    stranger = Authority.new("someone-else")
                    issued = stranger.issue("front-proxy-client", client=True)
                    ctx = client_context(app.stream_ca)
                    load_chain(ctx, issued.cert_pem, issued.key_pem)
                    with pytest.raises((aiohttp.ClientError, ssl.SSLError, OSError)):
                        async with http.get(
                            url, headers=headers, ssl=ctx, server_hostname=f"{METRICS}.{ns}.svc"
                        ) as resp:
                            await resp.read()
