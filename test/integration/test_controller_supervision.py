"""The controller's background task (leader election and reconciling) comes back after
an exception nobody foresaw, logged, against the real API server."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from aviator.controller.app import ControllerApp, Options
from aviator.kube import KubeClient
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration


async def test_reconciling_comes_back_after_an_unforeseen_error(
    control_plane: ControlPlane, namespace: str, crd: None, caplog: pytest.LogCaptureFixture
) -> None:
    client = await KubeClient.load(str(control_plane.kubeconfig))
    options = Options(
        namespace=namespace,
        identity="supervised",
        leader_elect=True,
        retry_period=0.2,
        renew_deadline=2.0,
        lease_duration=3.0,
        http_host="127.0.0.1",
        http_port=0,
    )
    app = ControllerApp(client, options, registry=CollectorRegistry())
    real_lead = app._lead
    terms = 0
    second = asyncio.Event()

    async def lead() -> None:
        nonlocal terms
        terms += 1
        if terms == 1:
            raise RuntimeError("a bug in the first term")
        second.set()
        await real_lead()

    app._lead = lead  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.INFO):
            await app.start()
            async with asyncio.timeout(60):
                await second.wait()
        assert app.is_leader()
        assert "failed; restarting it" in caplog.text
        assert "a bug in the first term" in caplog.text
    finally:
        await app.stop()
        await client.close()
