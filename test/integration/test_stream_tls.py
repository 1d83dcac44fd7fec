"""TLS of the agent stream against the real API server: the controller keeps its CA
and certificate in a Secret and publishes the CA; an agent that trusts that CA streams
over wss:// and checks the Service's name; nobody else gets its token."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
from pathlib import Path

import aiohttp
import pytest
from integration_support import (
    NODE,
    NoSource,
    TestAgent,
    create_pod,
    eventually,
    pod_token,
    running_controller,
    stream_tls,
    stream_url,
)

from aviator.agent.app import Agent
from aviator.agent.config import AgentConfig
from aviator.agent.prober import NodeProber
from aviator.controller.certs import CA_CONFIGMAP, TLS_SECRET, issue
from aviator.kube import KubeClient
from aviator.kube.resources import CONFIGMAPS, SECRETS
from aviator.latency.tls import client_context
from aviator.pki import DAY, Authority, not_after
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration


async def test_agents_stream_over_tls_and_only_to_the_controller(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None, tmp_path: Path
) -> None:
    ns = namespace
    await create_pod(kube, ns, "web", "10.90.0.1", {"app": "web"}, node=NODE)
    token = await pod_token(kube, ns, NODE)
    async with running_controller(control_plane, ns, secure_serving=True) as app:
        url = stream_url(app)
        assert url.startswith("wss://")
        # What the controller keeps and publishes.
        secret = await kube.get(SECRETS, TLS_SECRET, ns)
        assert secret["type"] == "kubernetes.io/tls"
        ca = (await kube.get(CONFIGMAPS, CA_CONFIGMAP, ns))["data"]["ca.crt"]
        assert base64.b64decode(secret["data"]["ca.crt"]).decode() == ca
        assert app.stream_server_name == f"aviator-controller-stream.{ns}.svc"

        # A replica started next to it serves the same certificate.
        async with running_controller(control_plane, ns, secure_serving=True) as other:
            assert other.certs is not None and app.certs is not None
            assert other.certs.material == app.certs.material

        # An agent trusting the published CA streams; its latency arrives.
        async with TestAgent(url, token, tls=stream_tls(app)) as agent:
            agent.latency_ms = {"10.90.0.1": 12.0}

            async def measured() -> bool:
                return app.store.estimate("10.90.0.1", app.now()) is not None

            await eventually(measured)

        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token}"}
            # Another CA, another name, or no TLS at all: no connection (the token is
            # sent only inside a session with the right certificate).
            stranger = client_context(Authority.new("someone-else").cert_pem)
            for tls in (
                {"ssl": stranger, "server_hostname": app.stream_server_name},
                {"ssl": client_context(ca.encode()), "server_hostname": "evil.example"},
            ):
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await http.ws_connect(url, headers=headers, **tls)
            with pytest.raises((aiohttp.ClientError, ConnectionError)):
                await http.ws_connect(url.replace("wss://", "ws://"), headers=headers)

            # The real agent, with the CA in a file as the DaemonSet mounts it.
            ca_file = tmp_path / "ca.crt"
            ca_file.write_text(ca)
            token_file = tmp_path / "token"
            token_file.write_text(token)
            config = AgentConfig(
                node=NODE,
                report_interval_s=0.2,
                http_host="127.0.0.1",
                http_port=0,
                secure_serving=False,
                controller_urls=[url],
                controller_ca=str(ca_file),
                controller_server_name=app.stream_server_name,
                token_files=[str(token_file)],
            )
            real = Agent(config, kube, NoSource(), NodeProber(min_samples=0))  # type: ignore[arg-type]
            stop = asyncio.Event()
            task = asyncio.get_running_loop().create_task(real.run(stop))
            try:
                conn = None
                async with asyncio.timeout(30):
                    await real.started.wait()
                    conn = real.stream.connections[url]
                    while not conn.connected:
                        conn.changed.clear()
                        await conn.changed.wait()
                assert conn.connects == 1
            finally:
                stop.set()
                await task


async def test_the_serving_certificate_is_renewed_before_it_expires(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    """A certificate 10 days from expiry (the Secret as a year-old replica left it) is
    re-issued from the same CA; new connections get the new one; agents trusting the
    CA notice nothing."""
    ns = namespace
    names = (f"aviator-controller-stream.{ns}.svc",)
    ca = Authority.new("aviator-stream-ca")
    old = ca.issue(names[0], server_names=names, validity=10 * DAY)
    await kube.create(
        SECRETS,
        {
            "metadata": {"name": TLS_SECRET, "namespace": ns},
            "type": "kubernetes.io/tls",
            "data": {
                k: base64.b64encode(v).decode()
                for k, v in (
                    ("ca.crt", ca.cert_pem),
                    ("ca.key", ca.key_pem),
                    ("tls.crt", old.cert_pem),
                    ("tls.key", old.key_pem),
                )
            },
        },
        ns,
    )
    async with running_controller(control_plane, ns, secure_serving=True) as app:
        assert app.certs is not None and app.certs.material is not None
        held = app.certs.material
        assert held.ca_cert == ca.cert_pem  # the CA stays
        assert held.cert != old.cert_pem
        remaining = not_after(held.cert) - datetime.datetime.now(datetime.UTC)
        assert remaining > 300 * DAY

        # The next replica to look finds it fresh and changes nothing.
        assert not await app.certs.refresh()

        served = await asyncio.to_thread(
            ssl.get_server_certificate, ("127.0.0.1", app.http_port), timeout=10
        )
        assert served.strip() == held.cert.decode().strip()
    assert issue(names).cert != held.cert  # (a fresh CA signs something else)
