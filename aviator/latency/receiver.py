"""The controller's websocket endpoint for agent snapshots (mounted at GET /v1/stream).

Before the upgrade, in this order, each refusal costing less than the next step:

1. connection limits (limits.py): too many open or from this address → 429;
2. the token: none or not a plausible ServiceAccount JWT → 401 (auth.py, no review);
   a review over its rate → 429 with Retry-After; then the TokenReview (cached):
   invalid, expired, revoked, wrong audience → 401; another identity, or a token that
   names no node → 403; API server unreachable → 503;
3. too many connections for the token's node → 429.

Once connected, each text (or binary) frame is one v1 snapshot of at most
MAX_MESSAGE_BYTES (a larger frame closes the connection, 1009, unread); frames over
the connection's message rate are dropped. Frames wait their turn in the connection's
`Inbox` (inbox.py), taken in order: a few waiting hold the agent back (backpressure);
a replica far behind drops an agent's oldest waiting snapshots (`shed`) rather than
leave the socket unread until the heartbeat ends the stream. A bad one is counted and
answered with an error frame, and the connection goes on. A snapshot claiming another
node than the token's is refused whole; of the others, only the endpoints of pods
scheduled on the token's node reach the store (admission.py), and only within the
store's per-agent and total bounds (store.py). Refused endpoints are counted by reason
in `aviator_stream_endpoints_refused_total` and summed up to the agent in an error
frame at most once a minute, with the snapshots shed (`overloaded`). Parsing and
ingesting hand the event loop back every few milliseconds, so no message stalls the
replica. The token is re-checked every
`reauth_after_s` (up to a quarter sooner, at random), so a revoked or expired token
does not keep a connection alive forever (nor one whose pod moved: a changed node
ends it too). A re-check the API
server does not answer (503: no verdict) is no refusal: the stream goes on and the
token is checked again `REAUTH_RETRY_S` later.

Endpoints are judged against the Pod cache only once it holds its first list
(`located`): a snapshot that arrives before, as agents' first ones do when a replica
starts (its HTTP server is up before its informers have listed), waits for it, up to
SYNC_WAIT_S, rather than having every endpoint refused as `unknown_ip`; past that it is
answered with an error frame and not taken (the agent's next report tries again).

Once a snapshot is in the store, its admitted endpoint windows that report an open
request (`oldest_open_us` > 0) go to `on_open`, if given: the controller enqueues the
policies whose pods hold a request open longer than their p99Threshold at once,
instead of at their next evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import random
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import WSCloseCode, web
from prometheus_client import Counter, Gauge

from aviator.latency.admission import PodLocator, admit
from aviator.latency.auth import AuthResult, TokenAuthenticator
from aviator.latency.decoder import decode_snapshot_async
from aviator.latency.inbox import Inbox, read_frames
from aviator.latency.limits import StreamGate, TokenBucket
from aviator.latency.loads import admit_loads
from aviator.latency.schema import (
    MAX_MESSAGE_BYTES,
    EndpointWindow,
    SchemaError,
    Snapshot,
    encode_error,
)
from aviator.latency.store import LatencyStore

__all__ = ["AuthResult", "TokenAuthenticator", "bearer_token", "make_stream_handler"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OpenRequests = Callable[[Sequence[EndpointWindow]], None]

STREAM_CONNECTIONS = Gauge(
    "aviator_stream_connections", "Agent websocket connections currently open"
)
STREAM_MESSAGES = Counter(
    "aviator_stream_messages_total",
    "Agent snapshot messages received, by result (ok, invalid, error, throttled, unsynced, "
    "shed: dropped unread while newer ones from the same agent waited)",
    ["result"],
)
STREAM_ENDPOINTS = Counter(
    "aviator_stream_endpoints_total", "Endpoint windows ingested into the latency store"
)
STREAM_REFUSED_ENDPOINTS = Counter(
    "aviator_stream_endpoints_refused_total",
    "Endpoint windows of agent snapshots not ingested, by reason (unknown_ip: no live pod "
    "at the IP; other_node: the pod runs on another node than the agent's; agent_endpoints, "
    "store_endpoints, agent_buckets, store_buckets: a bound of the latency store)",
    ["reason"],
)
STREAM_REJECTED = Counter(
    "aviator_stream_rejected_total",
    "Agent connections refused before the upgrade, by HTTP status",
    ["status"],
)

_NOTICE_EVERY_S = 60.0
_LOG_EVERY_S = 10.0
_SLICE_S = 0.005  # at most this much work between two turns of the event loop
_CHUNK = 64  # endpoints between two looks at the clock
SYNC_WAIT_S = 10.0  # how long a snapshot waits for the Pod cache's first list
REAUTH_RETRY_S = 10.0  # a re-check the API server did not answer is tried again after
OVERLOADED = "overloaded"  # what the agent is told of snapshots its inbox dropped


def bearer_token(request: web.Request) -> str:
    """The token of an `Authorization: Bearer ...` header, or "" when absent."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _RefusalLog:
    """Logs refusals at most once per `_LOG_EVERY_S` per status (a flood of junk
    tokens must not become a flood of log lines), with how many went unlogged."""

    def __init__(self) -> None:
        self._next: dict[int, float] = {}
        self._quiet: Tally[int] = Tally()

    def __call__(self, result: AuthResult, source: str) -> None:
        now = time.monotonic()
        if now < self._next.get(result.status, 0.0):
            self._quiet[result.status] += 1
            return
        self._next[result.status] = now + _LOG_EVERY_S
        more = self._quiet.pop(result.status, 0)
        log.info(
            "refused agent stream from %s (%d): %s%s",
            source,
            result.status,
            result.reason,
            f" (and {more} more refused with {result.status})" if more else "",
        )


def _refuse(result: AuthResult, source: str, say: _RefusalLog) -> web.HTTPException:
    STREAM_REJECTED.labels(str(result.status)).inc()
    say(result, source)
    if result.status == 401:
        return web.HTTPUnauthorized(
            text=result.reason, headers={"WWW-Authenticate": 'Bearer realm="aviator"'}
        )
    if result.status == 403:
        return web.HTTPForbidden(text=result.reason)
    if result.status == 429:
        retry = str(max(1, math.ceil(result.retry_after_s)))
        return web.HTTPTooManyRequests(text=result.reason, headers={"Retry-After": retry})
    return web.HTTPServiceUnavailable(text=result.reason)


@dataclasses.dataclass(slots=True)
class _Peer:
    """One agent connection: where from, which node it speaks for, what it was told."""

    remote: str
    node: str
    messages: TokenBucket
    refused: Tally[str] = dataclasses.field(default_factory=Tally)
    next_notice: float = 0.0
    reported: bool = False  # a snapshot of this connection was taken
    located: bool = False  # the Pod cache had listed when a snapshot came


def make_stream_handler(
    store: LatencyStore,
    authenticator: TokenAuthenticator,
    locate: PodLocator,
    *,
    gate: StreamGate | None = None,
    clock: Callable[[], float] = time.monotonic,
    reauth_after_s: float = 300.0,
    heartbeat_s: float = 30.0,
    on_open: OpenRequests | None = None,
    located: Callable[[], Awaitable[None]] | None = None,
) -> Handler:
    """An aiohttp handler feeding `store` from authenticated agent websockets.

    `locate` names the live pods at an IP (the controller's Pod cache); `located`
    returns once that cache holds its first list (None: it always does); `gate` holds
    the flood limits (limits.py); `clock` is the store's clock (the `now` given to
    `ingest_snapshot`); `on_open` hears of admitted windows with an open request.
    """
    gate = gate or StreamGate()
    say = _RefusalLog()

    async def handle(request: web.Request) -> web.StreamResponse:
        source = request.remote or ""
        refusal = gate.enter(source)
        if refusal is not None:
            raise _refuse(AuthResult(429, reason=refusal, retry_after_s=5.0), source, say)
        try:
            return await _authenticated(request, source)
        finally:
            gate.leave(source)

    async def _authenticated(request: web.Request, source: str) -> web.StreamResponse:
        token = bearer_token(request)
        verdict = await authenticator.authenticate(token, lambda: gate.review(source))
        if verdict.allowed and verdict.node is None:
            verdict = AuthResult(403, verdict.username, "the token names no node")
        if not verdict.allowed or verdict.node is None:
            raise _refuse(verdict, source, say)
        node = verdict.node
        refusal = gate.enter_node(node)
        if refusal is not None:
            raise _refuse(AuthResult(429, reason=refusal, retry_after_s=5.0), source, say)
        try:
            return await _serve(request, token, verdict, source, node)
        finally:
            gate.leave_node(node)

    async def _serve(
        request: web.Request, token: str, verdict: AuthResult, source: str, node: str
    ) -> web.StreamResponse:
        authed_at = time.monotonic()
        # Up to a quarter sooner, at random: a fleet of agents that connected together
        # (a controller restart) does not send its TokenReviews together again.
        reauth_s = reauth_after_s * (1.0 - random.random() / 4)
        ws = web.WebSocketResponse(heartbeat=heartbeat_s, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        peer = _Peer(source, node, gate.message_bucket())
        log.info("agent stream from %s as %s for node %s", source, verdict.username, node)
        STREAM_CONNECTIONS.inc()
        inbox = Inbox()
        # Within a quarter heartbeat a frame is taken or the reader reads on: a pong
        # is never left unread for the half heartbeat aiohttp waits for it.
        reading = asyncio.create_task(
            read_frames(ws, inbox, heartbeat_s / 4, functools.partial(_shed, peer))
        )
        try:
            while (data := await inbox.get()) is not None:
                if time.monotonic() - authed_at > reauth_s:
                    verdict = await authenticator.authenticate(token)
                    if verdict.status == 503:
                        # No verdict (the API server did not answer the review): no
                        # refusal either. Ending every stream whose re-check fell in an
                        # API server's bad minute would stop the latency data when the
                        # cluster is busiest; look again shortly.
                        log.info("re-checking the token of %s: %s", source, verdict.reason)
                        authed_at = time.monotonic() - reauth_s + REAUTH_RETRY_S
                    elif not verdict.allowed or verdict.node != peer.node:
                        reason = verdict.reason or f"it now names node {verdict.node}"
                        # The reader first: a close must not race its next receive.
                        await _stop(reading)
                        await ws.send_str(encode_error(f"token no longer accepted: {reason}"))
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION)
                        break
                    else:
                        authed_at = time.monotonic()
                if not peer.messages.take():
                    STREAM_MESSAGES.labels("throttled").inc()
                    answer = _refusals(peer, Tally({"message_rate": 1}), count=False)
                elif not peer.located and not await _pods_listed(located):
                    STREAM_MESSAGES.labels("unsynced").inc()
                    answer = encode_error(
                        "the controller's Pod cache has not listed the pods yet "
                        f"({SYNC_WAIT_S:g}s): snapshot not taken"
                    )
                else:
                    peer.located = True  # (a cache that has listed stays listed)
                    # Decoded messages are big: a few at a time. Answers are sent
                    # after, so a peer that does not read cannot hold the turn (nor
                    # one waiting for the Pod cache: that wait comes before it).
                    async with gate.parsing:
                        answer = await _receive(data, store, locate, clock, peer, on_open)
                if answer is None and peer.refused:  # e.g. snapshots the inbox dropped
                    answer = _refusals(peer, Tally(), count=False)
                if answer is not None:
                    try:
                        await ws.send_str(answer)
                    except ConnectionError:  # the agent is gone already
                        break
        finally:
            await _stop(reading)
            STREAM_CONNECTIONS.dec()
            log.info("agent stream from %s closed", source)
        return ws

    return handle


def _shed(peer: _Peer, dropped: int) -> None:
    """Snapshots of `peer` its inbox dropped: counted, and told with its refusals."""
    STREAM_MESSAGES.labels("shed").inc(dropped)
    peer.refused[OVERLOADED] += dropped


async def _stop(reading: asyncio.Task[None]) -> None:
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading


async def _pods_listed(located: Callable[[], Awaitable[None]] | None) -> bool:
    """Whether the Pod cache has its first list, waiting up to SYNC_WAIT_S for it."""
    if located is None:
        return True
    try:
        async with asyncio.timeout(SYNC_WAIT_S):
            await located()
    except TimeoutError:
        return False
    return True


async def _receive(
    data: str | bytes,
    store: LatencyStore,
    locate: PodLocator,
    clock: Callable[[], float],
    peer: _Peer,
    on_open: OpenRequests | None = None,
) -> str | None:
    """Take one message; the frame to answer with, if any."""
    try:
        snapshot = await decode_snapshot_async(data, slice_s=_SLICE_S)
        if snapshot.node != peer.node:
            raise SchemaError(f"node: {snapshot.node!r} is not the token's node {peer.node!r}")
    except SchemaError as exc:
        STREAM_MESSAGES.labels("invalid").inc()
        log.debug("bad snapshot from %s: %s", peer.remote, exc)
        return encode_error(str(exc))
    opened: list[EndpointWindow] | None = None if on_open is None else []
    try:
        anew, peer.reported = not peer.reported, True
        accepted, refused = await _ingest(
            snapshot, store, locate, clock(), peer.node, opened, anew=anew
        )
        if on_open is not None and opened:
            on_open(opened)
    except Exception as exc:  # a store bug must not end every agent's stream
        STREAM_MESSAGES.labels("error").inc()
        log.exception("ingesting a snapshot from %s failed", peer.remote)
        return encode_error(f"internal error: {type(exc).__name__}")
    STREAM_MESSAGES.labels("ok").inc()
    STREAM_ENDPOINTS.inc(accepted)
    return _refusals(peer, refused) if refused else None


async def _ingest(
    snapshot: Snapshot,
    store: LatencyStore,
    locate: PodLocator,
    now: float,
    node: str,
    opened: list[EndpointWindow] | None = None,
    *,
    anew: bool = False,
) -> tuple[int, Tally[str]]:
    """Admit and store the snapshot's endpoints a chunk at a time, handing the event
    loop back whenever a slice of work is done; (accepted, refused by reason). The
    admitted windows reporting an open request are appended to `opened`, if given.
    `anew`: the connection's first snapshot (`LatencyStore.heard`)."""
    accepted = 0
    refused: Tally[str] = Tally()
    store.heard(node, now, anew=anew)
    store.maps.note(node, snapshot.maps_full, now)
    store.loads.note(node, admit_loads(snapshot.loads, node, locate), now)
    eps: Sequence[EndpointWindow] = snapshot.endpoints
    deadline = time.perf_counter() + _SLICE_S
    for start in range(0, len(eps), _CHUNK):
        admission = admit(eps[start : start + _CHUNK], node, locate)
        refused.update(admission.refused)
        part = dataclasses.replace(snapshot, node=node, endpoints=admission.kept)
        result = store.ingest_snapshot(part, now)
        if opened is not None:
            opened.extend(w for w in admission.kept if w.oldest_open_us)
        accepted += result.accepted
        refused.update(result.refused)
        if time.perf_counter() >= deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + _SLICE_S
    return accepted, refused


def _refusals(peer: _Peer, refused: Tally[str], *, count: bool = True) -> str | None:
    """Count refusals; what to tell the agent of those since the last time, at most
    once a minute (None: nothing now)."""
    if count:
        for reason, n in refused.items():
            STREAM_REFUSED_ENDPOINTS.labels(reason).inc(n)
    peer.refused.update(refused)
    now = time.monotonic()
    if now < peer.next_notice:
        return None
    peer.next_notice = now + _NOTICE_EVERY_S
    summary = ", ".join(f"{reason} {n}" for reason, n in sorted(peer.refused.items()))
    peer.refused.clear()
    log.info("refused from %s (node %s): %s", peer.remote, peer.node, summary)
    return encode_error(f"refused: {summary}")
