"""The controller's websocket endpoint for agent snapshots (mounted at GET /v1/stream).

Authentication happens before the upgrade: no or bad token → 401, a valid token of
another identity → 403, API server unreachable → 503. Once connected, each text (or
binary) frame is one v1 snapshot; a bad one is counted and answered with an error
frame, and the connection goes on. The token is re-checked every `reauth_after_s`,
so a revoked or expired token does not keep a connection alive forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import Counter, Gauge

from aviator.latency.auth import AuthResult, TokenAuthenticator
from aviator.latency.schema import MAX_MESSAGE_BYTES, SchemaError, encode_error, parse_snapshot
from aviator.latency.store import LatencyStore

__all__ = ["AuthResult", "TokenAuthenticator", "bearer_token", "make_stream_handler"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STREAM_CONNECTIONS = Gauge(
    "aviator_stream_connections", "Agent websocket connections currently open"
)
STREAM_MESSAGES = Counter(
    "aviator_stream_messages_total",
    "Agent snapshot messages received, by result (ok, invalid, error)",
    ["result"],
)
STREAM_ENDPOINTS = Counter(
    "aviator_stream_endpoints_total", "Endpoint windows ingested into the latency store"
)
STREAM_REJECTED = Counter(
    "aviator_stream_rejected_total",
    "Agent connections refused before the upgrade, by HTTP status",
    ["status"],
)


def bearer_token(request: web.Request) -> str:
    """The token of an `Authorization: Bearer ...` header, or "" when absent."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _refuse(result: AuthResult) -> web.HTTPException:
    STREAM_REJECTED.labels(str(result.status)).inc()
    log.info("refused agent stream (%d): %s", result.status, result.reason)
    if result.status == 401:
        return web.HTTPUnauthorized(
            text=result.reason, headers={"WWW-Authenticate": 'Bearer realm="aviator"'}
        )
    if result.status == 403:
        return web.HTTPForbidden(text=result.reason)
    return web.HTTPServiceUnavailable(text=result.reason)


def make_stream_handler(
    store: LatencyStore,
    authenticator: TokenAuthenticator,
    *,
    clock: Callable[[], float] = time.monotonic,
    reauth_after_s: float = 300.0,
    heartbeat_s: float = 30.0,
) -> Handler:
    """An aiohttp handler feeding `store` from authenticated agent websockets.

    `clock` is the store's clock (the `now` given to `ingest`).
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        token = bearer_token(request)
        verdict = await authenticator.authenticate(token)
        if not verdict.allowed:
            raise _refuse(verdict)
        authed_at = time.monotonic()
        ws = web.WebSocketResponse(heartbeat=heartbeat_s, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        peer = request.remote
        log.info("agent stream from %s as %s", peer, verdict.username)
        STREAM_CONNECTIONS.inc()
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break  # ERROR; close frames end the iteration by themselves
                if time.monotonic() - authed_at > reauth_after_s:
                    verdict = await authenticator.authenticate(token)
                    if not verdict.allowed:
                        await ws.send_str(
                            encode_error(f"token no longer accepted: {verdict.reason}")
                        )
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION)
                        break
                    authed_at = time.monotonic()
                await _receive(ws, msg.data, store, clock, peer)
        finally:
            STREAM_CONNECTIONS.dec()
            log.info("agent stream from %s closed", peer)
        return ws

    return handle


async def _receive(
    ws: web.WebSocketResponse,
    data: str | bytes,
    store: LatencyStore,
    clock: Callable[[], float],
    peer: str | None,
) -> None:
    try:
        snapshot = parse_snapshot(data)
    except SchemaError as exc:
        STREAM_MESSAGES.labels("invalid").inc()
        log.warning("bad snapshot from %s: %s", peer, exc)
        await ws.send_str(encode_error(str(exc)))
        return
    try:
        accepted = store.ingest(snapshot, clock())
    except Exception as exc:  # a store bug must not end every agent's stream
        STREAM_MESSAGES.labels("error").inc()
        log.exception("ingesting a snapshot from %s failed", peer)
        await ws.send_str(encode_error(f"internal error: {type(exc).__name__}"))
        return
    STREAM_MESSAGES.labels("ok").inc()
    STREAM_ENDPOINTS.inc(accepted)
