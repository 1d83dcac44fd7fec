"""The agent's HTTP API: GET /latency, /metrics, /healthz, /readyz (and /status).

/latency, /status and /metrics name pods, their IPs and latencies: by default
(`AgentConfig.secure_serving`) the agent serves HTTPS with a certificate of its own
and these three answer only requests a TokenReview + SubjectAccessReview allow
(aviator/runtime/httpauth.py); /healthz and /readyz hold no data and stay open (the
kubelet probes them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from aviator.agent.metrics import AgentMetrics


class AgentView(Protocol):
    metrics: AgentMetrics

    def latency_table(self) -> dict[str, dict[str, Any]]: ...

    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


DATA_PATHS = ("/latency", "/status", "/metrics")


def make_api(agent: AgentView, middlewares: Iterable[Any] = ()) -> web.Application:
    async def latency(_: web.Request) -> web.Response:
        return web.json_response(agent.latency_table())

    async def metrics(_: web.Request) -> web.Response:
        body = agent.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = agent.healthy()
        return web.Response(status=200 if ok else 503, text="ok" if ok else "report loop stalled")

    async def readyz(_: web.Request) -> web.Response:
        ok = agent.ready()
        return web.Response(status=200 if ok else 503, text="ok" if ok else "not ready")

    async def status(_: web.Request) -> web.Response:
        return web.json_response(agent.status())

    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/latency", latency)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app
