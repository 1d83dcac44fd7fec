"""The test app's gRPC server (grpcio's asyncio server), without generated code.

A generic handler serves every unary method with bytes in and bytes out, so no
protoc is needed:

- `/grpc.health.v1.Health/Check`: SERVING at once (the standard health protocol; the
  reply is the encoded HealthCheckResponse, field 1 = 1);
- `/aviator.testapp.TestApp/Control`: the request is a control query string
  ("latency=2s&mode=fixed"; empty reads the settings), the reply the settings and
  counts as JSON, as HTTP's `/control`;
- any other method is a measured request: after the latency, OK with a small JSON
  reply (the response HEADERS leave with it, not before, so the first response
  HEADERS mark the end of the work as HTTP's status line does); or at once
  UNAVAILABLE, ERROR_RATE of the time. Trailers carry `x-served-by`.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import grpc.aio
from testapp_core import App

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
CONTROL = "/aviator.testapp.TestApp/Control"
SERVING = b"\x08\x01"


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self.app = app

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if details.method == HEALTH_CHECK:
            return grpc.unary_unary_rpc_method_handler(self.health)
        if details.method == CONTROL:
            return grpc.unary_unary_rpc_method_handler(self.control)
        return grpc.unary_unary_rpc_method_handler(self.call)

    async def health(self, request: bytes, context: Any) -> bytes:
        return SERVING

    async def control(self, request: bytes, context: Any) -> bytes:
        query = request.decode() or None
        status, body = self.app.control(query)
        if status != 200:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(body.get("error")))
        return json.dumps(body).encode()

    async def call(self, request: bytes, context: Any) -> bytes:
        answer = await self.app.answer()
        trailers = (("x-served-by", self.app.name),)
        if not answer.ok:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected", trailers)
        context.set_trailing_metadata(trailers)
        return json.dumps(self.app.body(answer)).encode()


async def start_grpc_server(app: App, host: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1000)]
    )
    server.add_generic_rpc_handlers((_Handler(app),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC server cannot listen on {host}:{port}")
    await server.start()
    return server
