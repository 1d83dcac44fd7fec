"""The controller's websocket endpoint for agent snapshots (mounted at GET /v1/stream).

Authentication happens before the upgrade: no or bad token → 401, a valid token of
another identity, or one that names no node → 403, API server unreachable → 503.
Once connected, each text (or binary) frame is one v1 snapshot; a bad one is counted
and answered with an error frame, and the connection goes on. A snapshot claiming
another node than the token's is refused whole; of the others, only the endpoints of
pods scheduled on the token's node reach the store (admission.py), the rest are
counted by reason in `aviator_stream_endpoints_refused_total` and summed up to the
agent in an error frame at most once a minute. The token is re-checked every
`reauth_after_s`, so a revoked or expired token does not keep a connection alive
forever (nor one whose pod moved: a changed node ends it too).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import Counter, Gauge

from aviator.latency.admission import PodLocator, admit
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
STREAM_REFUSED_ENDPOINTS = Counter(
    "aviator_stream_endpoints_refused_total",
    "Endpoint windows of agent snapshots not ingested, by reason (unknown_ip: no live pod "
    "at the IP; other_node: the pod runs on another node than the agent's)",
    ["reason"],
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


_NOTICE_EVERY_S = 60.0


@dataclasses.dataclass(slots=True)
class _Peer:
    """One agent connection: where from, which node it speaks for, what it was told."""

    remote: str | None
    node: str
    refused: Tally[str] = dataclasses.field(default_factory=Tally)
    next_notice: float = 0.0


def make_stream_handler(
    store: LatencyStore,
    authenticator: TokenAuthenticator,
    locate: PodLocator,
    *,
    clock: Callable[[], float] = time.monotonic,
    reauth_after_s: float = 300.0,
    heartbeat_s: float = 30.0,
) -> Handler:
    """An aiohttp handler feeding `store` from authenticated agent websockets.

    `locate` names the live pods at an IP (the controller's Pod cache); `clock` is the
    store's clock (the `now` given to `ingest`).
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        token = bearer_token(request)
        verdict = await authenticator.authenticate(token)
        if verdict.allowed and verdict.node is None:
            verdict = AuthResult(403, verdict.username, "the token names no node")
        if not verdict.allowed or verdict.node is None:
            raise _refuse(verdict)
        authed_at = time.monotonic()
        ws = web.WebSocketResponse(heartbeat=heartbeat_s, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        peer = _Peer(request.remote, verdict.node)
        log.info("agent stream from %s as %s for node %s", peer.remote, verdict.username, peer.node)
        STREAM_CONNECTIONS.inc()
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break  # ERROR; close frames end the iteration by themselves
                if time.monotonic() - authed_at > reauth_after_s:
                    verdict = await authenticator.authenticate(token)
                    if not verdict.allowed or verdict.node != peer.node:
                        reason = verdict.reason or f"it now names node {verdict.node}"
                        await ws.send_str(encode_error(f"token no longer accepted: {reason}"))
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION)
                        break
                    authed_at = time.monotonic()
                await _receive(ws, msg.data, store, locate, clock, peer)
        finally:
            STREAM_CONNECTIONS.dec()
            log.info("agent stream from %s closed", peer.remote)
        return ws

    return handle


async def _receive(
    ws: web.WebSocketResponse,
    data: str | bytes,
    store: LatencyStore,
    locate: PodLocator,
    clock: Callable[[], float],
    peer: _Peer,
) -> None:
    try:
        snapshot = parse_snapshot(data)
        if snapshot.node != peer.node:
            raise SchemaError(f"node: {snapshot.node!r} is not the token's node {peer.node!r}")
    except SchemaError as exc:
        STREAM_MESSAGES.labels("invalid").inc()
        log.warning("bad snapshot from %s: %s", peer.remote, exc)
        await ws.send_str(encode_error(str(exc)))
        return
    try:
        admission = admit(snapshot.endpoints, peer.node, locate)
        accepted = store.ingest(dataclasses.replace(snapshot, endpoints=admission.kept), clock())
    except Exception as exc:  # a store bug must not end every agent's stream
        STREAM_MESSAGES.labels("error").inc()
        log.exception("ingesting a snapshot from %s failed", peer.remote)
        await ws.send_str(encode_error(f"internal error: {type(exc).__name__}"))
        return
    STREAM_MESSAGES.labels("ok").inc()
    STREAM_ENDPOINTS.inc(accepted)
    if admission.refused:
        await _tell_refusals(ws, peer, admission.refused)


async def _tell_refusals(ws: web.WebSocketResponse, peer: _Peer, refused: Tally[str]) -> None:
    """Count refusals; tell the agent what was refused since, at most once a minute."""
    for reason, n in refused.items():
        STREAM_REFUSED_ENDPOINTS.labels(reason).inc(n)
    peer.refused.update(refused)
    now = time.monotonic()
    if now < peer.next_notice:
        return
    peer.next_notice = now + _NOTICE_EVERY_S
    summary = ", ".join(f"{reason} {n}" for reason, n in sorted(peer.refused.items()))
    peer.refused.clear()
    log.info("refused endpoints from %s (node %s): %s", peer.remote, peer.node, summary)
    await ws.send_str(encode_error(f"endpoints refused: {summary}"))
