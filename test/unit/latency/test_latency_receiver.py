"""Token authentication and the websocket receiver, against a scripted TokenReview."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from aviator.kube.client import ApiError, KubeClient
from aviator.latency import receiver
from aviator.latency.admission import PodPlace
from aviator.latency.auth import (
    NODE_NAME_EXTRA,
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    TokenAuthenticator,
    precheck,
    service_account_username,
)
from aviator.latency.histogram import Histogram
from aviator.latency.inbox import MAX_WAITING
from aviator.latency.limits import StreamGate, StreamLimits
from aviator.latency.receiver import make_stream_handler
from aviator.latency.schema import EndpointWindow, PodLoad, Snapshot, encode_snapshot
from aviator.latency.store import LatencyStore

AGENT = "system:serviceaccount:aviator-system:aviator-agent"


NODE = "node-1"


def jwt(subject: str, **claims: Any) -> str:
    """An unsigned JWT-shaped token (the fake reviews below judge it by its subject)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'sub': subject, **claims})}.sig"


def subject(token: str) -> str:
    body = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["sub"])


class FakeReviews:
    """Answers TokenReviews from a token → (username, audiences[, extra]) table; the
    user's extra names NODE unless the table gives one."""

    def __init__(self, users: dict[str, Any]) -> None:
        self.users = users
        self.bodies: list[dict[str, Any]] = []
        self.down = False

    async def create(self, res: object, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        if self.down:
            raise ApiError(500, text="etcd on fire")
        user = self.users.get(subject(body["spec"]["token"]))
        if user is None:
            return {"status": {"authenticated": False, "error": "invalid bearer token"}}
        extra = user[2] if len(user) > 2 else {NODE_NAME_EXTRA: [NODE]}
        return {
            "status": {
                "authenticated": True,
                "user": {"username": user[0], "extra": extra},
                "audiences": user[1],
            }
        }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def authenticator(
    reviews: FakeReviews, clock: Clock | None = None, **kw: Any
) -> TokenAuthenticator:
    return TokenAuthenticator(
        cast(KubeClient, reviews),
        ["aviator-system:aviator-agent"],
        clock=clock or Clock(),
        **kw,
    )


def test_service_account_usernames() -> None:
    assert service_account_username("ns:sa") == "system:serviceaccount:ns:sa"
    assert service_account_username(AGENT) == AGENT
    for bad in ("ns", ":sa", "ns:", "a:b:c"):
        with pytest.raises(ValueError):
            service_account_username(bad)


async def test_verdicts_and_caching() -> None:
    reviews = FakeReviews({"good": (AGENT, []), "other": ("system:serviceaccount:x:y", [])})
    clock = Clock()
    auth = authenticator(reviews, clock, cache_ttl_s=60, negative_ttl_s=5)
    assert (await auth.authenticate("")).status == 401
    assert reviews.bodies == []
    ok = await auth.authenticate(jwt("good"))
    assert ok.allowed and ok.username == AGENT
    assert (await auth.authenticate(jwt("other"))).status == 403
    assert (await auth.authenticate(jwt("bogus"))).status == 401
    assert auth.reviews == 3
    clock.now = 4.0  # everything is cached
    for token in ("good", "other", "bogus"):
        await auth.authenticate(jwt(token))
    assert auth.reviews == 3
    clock.now = 6.0  # refusals expired, the acceptance not yet
    await auth.authenticate(jwt("good"))
    await auth.authenticate(jwt("bogus"))
    assert auth.reviews == 4
    clock.now = 61.0
    await auth.authenticate(jwt("good"))
    assert auth.reviews == 5


async def test_outage_is_503_and_not_cached() -> None:
    reviews = FakeReviews({"good": (AGENT, [])})
    auth = authenticator(reviews)
    reviews.down = True
    assert (await auth.authenticate(jwt("good"))).status == 503
    reviews.down = False
    assert (await auth.authenticate(jwt("good"))).allowed


async def test_audience_is_requested_and_checked() -> None:
    reviews = FakeReviews({"good": (AGENT, ["aviator"]), "wrong": (AGENT, ["api"])})
    auth = authenticator(reviews, audiences=["aviator"])
    assert (await auth.authenticate(jwt("good", aud=["aviator"]))).allowed
    assert reviews.bodies[0]["spec"]["audiences"] == ["aviator"]
    # The API server has the last word (the claims are not verified here)...
    assert (await auth.authenticate(jwt("wrong", aud=["aviator"]))).status == 401
    assert len(reviews.bodies) == 2
    # ... but a token whose claims already say no costs no review.
    assert (await auth.authenticate(jwt("wrong", aud="api"))).status == 401
    assert len(reviews.bodies) == 2


def test_precheck_reads_the_token_as_an_unverified_jwt() -> None:
    now = 1_000_000.0
    assert precheck(jwt("a", exp=now + 10, aud="x"), ["x"], now) is None
    assert precheck(jwt("a", exp=now - 30), [], now) is None  # within the clock skew
    assert precheck(jwt("a", exp=now - 61), [], now) == "token expired"
    assert precheck(jwt("a", aud=["y", "z"]), ["x"], now) == (
        "token not valid for the expected audience"
    )
    assert precheck(jwt("a", aud=["y", "x"]), ["x"], now) is None
    for junk in ("junk", "a.b", "a.%%%.c", "a.bnVsbA.c", "x" * 20000, "a..c"):
        assert precheck(junk, [], now) is not None, junk


async def test_reviews_are_rationed_and_run_a_few_at_a_time() -> None:
    reviews = FakeReviews({"good": (AGENT, [])})
    auth = authenticator(reviews)
    verdict = await auth.authenticate(jwt("good"), lambda: ("slow down", 2.5))
    assert (verdict.status, verdict.reason, verdict.retry_after_s) == (429, "slow down", 2.5)
    assert reviews.bodies == []
    assert (await auth.authenticate(jwt("good"), lambda: (None, 0.0))).allowed
    # A cached verdict is not rationed.
    assert (await auth.authenticate(jwt("good"), lambda: ("no", 1.0))).allowed
    assert len(reviews.bodies) == 1


async def test_the_node_comes_from_the_token() -> None:
    """node-name extra (pod- or node-bound tokens); else the token's pod, looked up;
    a token bound to nothing names no node and is refused."""
    pod_bound = {POD_NAME_EXTRA: ["agent-x"], POD_UID_EXTRA: ["uid-1"]}
    reviews = FakeReviews(
        {
            "node-bound": (AGENT, [], {NODE_NAME_EXTRA: ["n7"]}),
            "pod-bound": (AGENT, [], pod_bound),
            "gone-pod": (AGENT, [], {POD_NAME_EXTRA: ["old"], POD_UID_EXTRA: ["uid-0"]}),
            "unbound": (AGENT, [], {}),
            "odd": (AGENT, [], {NODE_NAME_EXTRA: ["a", "b"]}),
        }
    )
    looked_up: list[tuple[str, str, str]] = []
    api_down = False

    async def resolve(namespace: str, name: str, uid: str) -> str | None:
        looked_up.append((namespace, name, uid))
        if api_down:
            raise OSError("connection refused")
        return "n8" if (name, uid) == ("agent-x", "uid-1") else None

    auth = authenticator(reviews, resolve_pod_node=resolve)
    assert (await auth.authenticate(jwt("node-bound"))).node == "n7"
    verdict = await auth.authenticate(jwt("pod-bound"))
    assert verdict.allowed and verdict.node == "n8"
    assert looked_up == [("aviator-system", "agent-x", "uid-1")]
    for token in ("gone-pod", "unbound", "odd"):
        verdict = await auth.authenticate(jwt(token))
        assert verdict.status == 403 and verdict.node is None, token
    assert "bound to no pod or node" in verdict.reason
    api_down = True
    assert (
        await authenticator(reviews, resolve_pod_node=resolve).authenticate(jwt("pod-bound"))
    ).status == 503
    # Without a resolver, a pod-bound token lacking the node-name extra names no node.
    assert (await authenticator(reviews).authenticate(jwt("pod-bound"))).status == 403
    lenient = authenticator(reviews, require_node=False)
    verdict = await lenient.authenticate(jwt("unbound"))
    assert verdict.allowed and verdict.node is None


def snapshot_text(ip: str = "10.0.0.1", node: str = NODE, pod: str | None = "ns/p") -> str:
    h = Histogram.from_values([5000] * 10)
    ep = EndpointWindow(ip, 8080, "server", pod, h, 10, 50000, 5000, 2, 0)
    return encode_snapshot(Snapshot(node, "ebpf", 1.0, 1.0, (ep,)))


# Who lives where, as the controller's Pod cache says.
PODS = {
    "10.0.0.1": [PodPlace("ns/p", NODE)],
    "10.0.0.2": [PodPlace("ns/q", NODE)],
    "10.0.9.1": [PodPlace("ns/elsewhere", "node-2")],
    "10.0.9.2": [PodPlace("ns/here", NODE), PodPlace("ns/there", "node-2")],
}


def locate(ip: str) -> list[PodPlace]:
    return PODS.get(ip, [])


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], LatencyStore]]:
    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews(
        {
            "good": (AGENT, []),
            "other": ("system:serviceaccount:x:y", []),
            "unbound": (AGENT, [], {}),
        }
    )
    app = web.Application()
    app.router.add_get("/v1/stream", make_stream_handler(store, authenticator(reviews), locate))
    async with TestClient(TestServer(app)) as client:
        yield client, store


async def test_refused_before_upgrade(
    served: tuple[TestClient[web.Request, web.Application], LatencyStore],
) -> None:
    client, _ = served
    for headers, status in (
        ({}, 401),
        ({"Authorization": f"Bearer {jwt('bogus')}"}, 401),
        ({"Authorization": "Basic good"}, 401),
        ({"Authorization": f"Bearer {jwt('other')}"}, 403),
        ({"Authorization": f"Bearer {jwt('unbound')}"}, 403),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await client.ws_connect("/v1/stream", headers=headers)
        assert err.value.status == status


async def test_snapshots_reach_the_store_and_garbage_gets_an_error_frame(
    served: tuple[TestClient[web.Request, web.Application], LatencyStore],
) -> None:
    client, store = served
    async with client.ws_connect(
        "/v1/stream", headers={"Authorization": f"Bearer {jwt('good')}"}
    ) as ws:
        await ws.send_str("not json")
        reply = json.loads(await ws.receive_str())
        assert reply["kind"] == "error" and "JSON" in reply["error"]
        await ws.send_str(json.dumps({"v": 99}))
        assert "version" in json.loads(await ws.receive_str())["error"]
        await ws.send_str(snapshot_text())
        # A second bad frame proves the connection survived the first ones and that the
        # good snapshot before it was handled (frames are processed in order).
        await ws.send_bytes(b"\x00")
        assert json.loads(await ws.receive_str())["kind"] == "error"
    est = store.estimate("10.0.0.1", now=time.monotonic())
    assert est is not None and est.samples == 10 and est.rif == 2


async def test_an_agent_speaks_only_for_its_own_nodes_pods(
    served: tuple[TestClient[web.Request, web.Application], LatencyStore],
) -> None:
    client, store = served
    refused = REGISTRY.get_sample_value(
        "aviator_stream_endpoints_refused_total", {"reason": "other_node"}
    )
    async with client.ws_connect(
        "/v1/stream", headers={"Authorization": f"Bearer {jwt('good')}"}
    ) as ws:
        # A snapshot claiming another node is refused whole.
        await ws.send_str(snapshot_text("10.0.9.1", node="node-2"))
        reply = json.loads(await ws.receive_str())
        assert "is not the token's node" in reply["error"]
        # Another node's pod, an IP two nodes' pods claim, an unknown IP: dropped and
        # counted, and the agent is told once.
        for ip in ("10.0.9.1", "10.0.9.2", "10.7.7.7"):
            await ws.send_str(snapshot_text(ip))
        reply = json.loads(await ws.receive_str())
        assert reply["error"] == "refused: other_node 1"
        # Its own pod goes in, under the name the controller knows it by.
        await ws.send_str(snapshot_text("10.0.0.2", pod="ns/not-what-the-agent-said"))
        await ws.send_str("garbage")
        assert json.loads(await ws.receive_str())["kind"] == "error"
    now = time.monotonic()
    assert store.ips() == ["10.0.0.2"]
    assert store.estimate("10.0.0.2", now) is not None
    assert store._windows[("10.0.0.2", 8080, "server", "agent")].pod == "ns/q"
    after = REGISTRY.get_sample_value(
        "aviator_stream_endpoints_refused_total", {"reason": "other_node"}
    )
    assert (after or 0) - (refused or 0) == 2


async def test_loads_are_kept_for_the_tokens_nodes_pods_only(
    served: tuple[TestClient[web.Request, web.Application], LatencyStore],
) -> None:
    client, store = served
    loads = tuple(PodLoad(ip, "queue", 3.0) for ip in ("10.0.0.1", "10.0.9.1", "10.0.9.2"))
    async with client.ws_connect(
        "/v1/stream", headers={"Authorization": f"Bearer {jwt('good')}"}
    ) as ws:
        await ws.send_str(encode_snapshot(Snapshot(NODE, "ebpf", 1.0, 1.0, (), loads=loads)))
        await ws.send_str("garbage")  # answered, so the snapshot before it was handled
        assert json.loads(await ws.receive_str())["kind"] == "error"
    now = time.monotonic()
    assert store.loads.load("10.0.0.1", "queue", now) == 3.0
    assert store.loads.load("10.0.9.1", "queue", now) is None
    assert store.loads.load("10.0.9.2", "queue", now) is None


@contextlib.asynccontextmanager
async def rechecked_stream(
    store: LatencyStore, reviews: FakeReviews, clock: Clock
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A stream of the agent "good" whose token is re-checked at every message (verdicts
    cached for 60 s of `clock`)."""
    auth = authenticator(reviews, clock, cache_ttl_s=60)
    app = web.Application()
    app.router.add_get("/v1/stream", make_stream_handler(store, auth, locate, reauth_after_s=0))
    async with (
        TestClient(TestServer(app)) as client,
        client.ws_connect("/v1/stream", headers={"Authorization": f"Bearer {jwt('good')}"}) as ws,
    ):
        yield ws


async def test_a_token_revoked_mid_stream_ends_the_connection() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews({"good": (AGENT, [])})
    clock = Clock()
    async with rechecked_stream(store, reviews, clock) as ws:
        await ws.send_str(snapshot_text("10.0.0.1"))
        await ws.send_str("garbage")  # answered, so the snapshot before it was handled
        assert json.loads(await ws.receive_str())["kind"] == "error"
        assert reviews.bodies and len(reviews.bodies) == 1  # re-checks hit the cache
        del reviews.users["good"]
        clock.now = 61.0  # the cached verdict expires; the next check asks again
        await ws.send_str(snapshot_text("10.0.0.2"))
        reply = json.loads(await ws.receive_str())
        assert reply["kind"] == "error" and "no longer accepted" in reply["error"]
        closing = await ws.receive()
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
    now = time.monotonic()
    assert store.estimate("10.0.0.1", now) is not None
    assert store.estimate("10.0.0.2", now) is None


async def test_a_recheck_the_api_server_does_not_answer_keeps_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(receiver, "REAUTH_RETRY_S", 0.0)  # look again at the next message
    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews({"good": (AGENT, [])})
    clock = Clock()
    async with rechecked_stream(store, reviews, clock) as ws:
        reviews.down = True  # the cached verdict expires and the API server answers none
        clock.now = 61.0
        await ws.send_str(snapshot_text("10.0.0.1"))
        await ws.send_str("garbage")  # answered, so the snapshot before it was handled
        assert "no longer accepted" not in json.loads(await ws.receive_str())["error"]
        assert len(reviews.bodies) == 3  # the connection's, and one per message since
        reviews.down = False
        del reviews.users["good"]  # a verdict, once one comes, still ends the stream
        await ws.send_str(snapshot_text("10.0.0.2"))
        assert "no longer accepted" in json.loads(await ws.receive_str())["error"]
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    now = time.monotonic()
    assert store.estimate("10.0.0.1", now) is not None
    assert store.estimate("10.0.0.2", now) is None


async def test_a_token_that_comes_to_name_another_node_ends_the_connection() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews({"good": (AGENT, [])})
    clock = Clock()
    async with rechecked_stream(store, reviews, clock) as ws:
        reviews.users["good"] = (AGENT, [], {NODE_NAME_EXTRA: ["node-2"]})
        clock.now = 61.0
        await ws.send_str(snapshot_text("10.0.0.1"))
        reply = json.loads(await ws.receive_str())
        assert "now names node node-2" in reply["error"]
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    assert len(store) == 0


async def test_floods_are_refused_early() -> None:
    """Over the connection limit: 429 before any review; over the review rate: 429
    with Retry-After; over the message rate: frames dropped and the agent told."""
    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews({"good": (AGENT, []), "bogus-1": None})
    limits = StreamLimits(
        connections_per_source=1,
        source_reviews_burst=1,
        source_reviews_per_s=0.01,
        messages_burst=2,
        messages_per_s=0.001,
    )
    app = web.Application()
    app.router.add_get(
        "/v1/stream",
        make_stream_handler(store, authenticator(reviews), locate, gate=StreamGate(limits)),
    )
    good = {"Authorization": f"Bearer {jwt('good')}"}
    async with TestClient(TestServer(app)) as client:
        async with client.ws_connect("/v1/stream", headers=good) as ws:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await client.ws_connect("/v1/stream", headers=good)
            assert err.value.status == 429
            for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.2"):
                await ws.send_str(snapshot_text(ip))
            reply = json.loads(await ws.receive_str())
            assert reply["error"] == "refused: message_rate 1"
        assert len(reviews.bodies) == 1
        # The review allowance of this address is spent: a new token is not reviewed.
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await client.ws_connect("/v1/stream", headers={"Authorization": f"Bearer {jwt('x')}"})
        assert err.value.status == 429 and err.value.headers is not None
        assert int(err.value.headers["Retry-After"]) >= 1
        # Junk is refused before any rationing or review.
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await client.ws_connect("/v1/stream", headers={"Authorization": "Bearer junk"})
        assert err.value.status == 401
        assert len(reviews.bodies) == 1
        # A known token still gets in (its verdict is cached).
        async with client.ws_connect("/v1/stream", headers=good):
            pass
    assert sorted(store.ips()) == ["10.0.0.1", "10.0.0.2"]


async def test_a_new_connections_first_snapshot_starts_a_new_session() -> None:
    """An agent that reconnects (restarted) has not measured what lapsed before: a pod
    whose data lapsed is silent (it keeps its place) until the new connection measures
    it, though the node's reports never paused for long. On one connection the same
    report means the pod had no traffic."""
    now = [0.0]
    store = LatencyStore(window_s=2, stale_after_s=10)
    app = web.Application()
    reviews = FakeReviews({"good": (AGENT, [])})
    handler = make_stream_handler(store, authenticator(reviews), locate, clock=lambda: now[0])
    app.router.add_get("/v1/stream", handler)
    headers = {"Authorization": f"Bearer {jwt('good')}"}

    async def report(ws: aiohttp.ClientWebSocketResponse, ip: str, at: float) -> None:
        now[0] = at
        await ws.send_str(snapshot_text(ip, pod=PODS[ip][0].key))
        await ws.send_bytes(b"\x00")  # answered in order: the snapshot was taken
        assert json.loads(await ws.receive_str())["kind"] == "error"

    async with TestClient(TestServer(app)) as client:
        async with client.ws_connect("/v1/stream", headers=headers) as ws:
            await report(ws, "10.0.0.1", 0.0)
            await report(ws, "10.0.0.2", 5.0)
            await report(ws, "10.0.0.2", 10.5)  # 10.0.0.1's data lapsed at 10
        assert not store.silent("10.0.0.1", now=10.6)  # its agent reported on: no traffic
        async with client.ws_connect("/v1/stream", headers=headers) as ws:
            await report(ws, "10.0.0.2", 11.0)
        assert store.silent("10.0.0.1", now=11.1)  # the new connection has not measured it


async def test_a_snapshot_waits_for_the_pod_caches_first_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica's HTTP server is up before its informers have listed: an agent's first
    snapshot then waits for the Pod cache instead of having every endpoint refused as
    unknown; one that would wait too long is answered with an error, not taken."""
    listed: dict[str, list[PodPlace]] = {}
    waiting, synced = asyncio.Event(), asyncio.Event()

    async def located() -> None:
        waiting.set()
        await synced.wait()

    store = LatencyStore(window_s=10, stale_after_s=5)
    app = web.Application()
    reviews = FakeReviews({"good": (AGENT, [])})
    handler = make_stream_handler(
        store, authenticator(reviews), lambda ip: listed.get(ip, []), located=located
    )
    app.router.add_get("/v1/stream", handler)
    headers = {"Authorization": f"Bearer {jwt('good')}"}
    async with TestClient(TestServer(app)) as client:
        async with client.ws_connect("/v1/stream", headers=headers) as ws:
            await ws.send_str(snapshot_text())
            await asyncio.wait_for(waiting.wait(), 10)
            listed.update(PODS)  # the first list arrives
            synced.set()
            await ws.send_bytes(b"\x00")  # answered in order: the snapshot was taken
            assert json.loads(await ws.receive_str())["kind"] == "error"
        est = store.estimate("10.0.0.1", now=time.monotonic())
        assert est is not None and est.samples == 10

        synced.clear()
        monkeypatch.setattr(receiver, "SYNC_WAIT_S", 0.01)
        async with client.ws_connect("/v1/stream", headers=headers) as ws:
            await ws.send_str(snapshot_text("10.0.0.2", pod="ns/q"))
            reply = json.loads(await asyncio.wait_for(ws.receive_str(), 10))
            assert reply["kind"] == "error" and "not listed the pods yet" in reply["error"]
        assert store.estimate("10.0.0.2", now=time.monotonic()) is None


async def test_waiting_for_the_pod_cache_does_not_hold_a_parsing_turn() -> None:
    """Snapshots waiting for the Pod cache's first list wait side by side: with one
    parsing turn, a second agent's snapshot is not queued behind the first one's wait
    (which would stretch each wait's bound by every wait before it)."""
    waiters, synced = 0, asyncio.Event()
    both_waiting = asyncio.Event()

    async def located() -> None:
        nonlocal waiters
        waiters += 1
        if waiters == 2:
            both_waiting.set()
        await synced.wait()

    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews(
        {
            "one": (AGENT, [], {NODE_NAME_EXTRA: [NODE]}),
            "two": (AGENT, [], {NODE_NAME_EXTRA: ["node-2"]}),
        }
    )
    app = web.Application()
    gate = StreamGate(StreamLimits(parsing=1))
    handler = make_stream_handler(store, authenticator(reviews), locate, gate=gate, located=located)
    app.router.add_get("/v1/stream", handler)
    async with TestClient(TestServer(app)) as client:
        one = await client.ws_connect(
            "/v1/stream", headers={"Authorization": f"Bearer {jwt('one')}"}
        )
        two = await client.ws_connect(
            "/v1/stream", headers={"Authorization": f"Bearer {jwt('two')}"}
        )
        await one.send_str(snapshot_text("10.0.0.1"))
        await two.send_str(snapshot_text("10.0.9.1", node="node-2", pod="ns/elsewhere"))
        await asyncio.wait_for(both_waiting.wait(), 10)
        synced.set()
        for ws in (one, two):
            await ws.send_bytes(b"\x00")  # answered in order: the snapshot was taken
            assert json.loads(await ws.receive_str())["kind"] == "error"
            await ws.close()
    assert store.estimate("10.0.0.1", now=time.monotonic()) is not None
    assert store.estimate("10.0.9.1", now=time.monotonic()) is not None


def big_snapshot(rif: int, endpoints: int = 200) -> str:
    """A snapshot of `endpoints` pods of NODE (10.1.x.y), each with `rif` requests in flight."""
    h = Histogram.from_values([5000] * 10)
    eps = tuple(
        EndpointWindow(
            f"10.1.{i // 250}.{i % 250 + 1}", 8080, "server", None, h, 10, 50000, 5000, rif, 0
        )
        for i in range(endpoints)
    )
    return encode_snapshot(Snapshot(NODE, "ebpf", 1.0, 1.0, eps))


async def test_a_replica_that_falls_behind_sheds_old_snapshots_not_the_stream() -> None:
    """While no snapshot can be taken (the parsing turn held), an agent that keeps
    sending (far more than a socket buffers) keeps its stream: the frames are read as
    they come, so the heartbeat's pings are answered; the oldest waiting snapshots are
    dropped, counted and told to the agent, and the newest is taken once the replica
    catches up. Without the inbox, the server stops reading and closes the stream when
    the pong does not come."""
    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews({"good": (AGENT, [])})
    gate = StreamGate(StreamLimits(parsing=1, messages_per_s=1000, messages_burst=1000))
    handler = make_stream_handler(
        store,
        authenticator(reviews),
        lambda ip: [PodPlace(f"ns/{ip}", NODE)],
        gate=gate,
        heartbeat_s=1.0,
    )
    app = web.Application()
    app.router.add_get("/v1/stream", handler)
    shed = REGISTRY.get_sample_value("aviator_stream_messages_total", {"result": "shed"}) or 0.0
    sent = 40
    messages = [big_snapshot(rif) for rif in range(1, sent + 1)]
    assert sum(map(len, messages)) > 1024 * 1024  # far more than a socket's buffers
    await gate.parsing.acquire()  # the replica is busy: nothing is taken
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect(
            "/v1/stream", headers={"Authorization": f"Bearer {jwt('good')}"}, autoping=False
        )

        async def send_all() -> None:
            for m in messages:
                await ws.send_str(m)

        sending = asyncio.create_task(send_all())
        pings, errors = 0, []
        while pings < 3:  # the server's heartbeat, answered while the turn is held
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.PING, f"the stream ended: {msg}"
            await ws.pong(msg.data)
            pings += 1
        await asyncio.wait_for(sending, 10)
        gate.parsing.release()
        await ws.send_bytes(b"\x00")  # answered once everything before it was taken
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
                continue
            assert msg.type == aiohttp.WSMsgType.TEXT
            reply = json.loads(msg.data)
            errors.append(reply["error"])
            if "version" in reply["error"] or "JSON" in reply["error"]:
                break
        await ws.close()
    now_shed = REGISTRY.get_sample_value("aviator_stream_messages_total", {"result": "shed"})
    # Of those sent, one was taken (it waits for the turn) and MAX_WAITING wait behind it.
    assert now_shed is not None and now_shed - shed >= sent - MAX_WAITING - 1
    assert any("overloaded" in e for e in errors), errors
    est = store.estimate("10.1.0.1", now=time.monotonic())
    assert est is not None and est.rif == sent  # the newest snapshot was taken


async def test_an_agent_sending_faster_than_a_replica_takes_is_paced_not_shed() -> None:
    """While the replica keeps up, a full inbox stops the reading (the socket's
    backpressure: the agent's sends wait, and the agent drops its own oldest): every
    snapshot sent is taken, none is read in vain."""
    store = LatencyStore(window_s=10, stale_after_s=5)
    reviews = FakeReviews({"good": (AGENT, [])})
    gate = StreamGate(StreamLimits(parsing=1, messages_per_s=1000, messages_burst=1000))
    handler = make_stream_handler(
        store, authenticator(reviews), lambda ip: [PodPlace(f"ns/{ip}", NODE)], gate=gate
    )
    app = web.Application()
    app.router.add_get("/v1/stream", handler)
    before = REGISTRY.get_sample_value("aviator_stream_messages_total", {"result": "ok"}) or 0.0
    shed = REGISTRY.get_sample_value("aviator_stream_messages_total", {"result": "shed"}) or 0.0
    sent = 40
    headers = {"Authorization": f"Bearer {jwt('good')}"}
    async with (
        TestClient(TestServer(app)) as client,
        client.ws_connect("/v1/stream", headers=headers) as ws,
    ):
        for rif in range(1, sent + 1):
            await ws.send_str(big_snapshot(rif))
        await ws.send_bytes(b"\x00")  # answered once everything before it was taken
        assert json.loads(await asyncio.wait_for(ws.receive_str(), 10))["kind"] == "error"
    ok = REGISTRY.get_sample_value("aviator_stream_messages_total", {"result": "ok"})
    assert ok is not None and ok - before == sent
    assert (
        REGISTRY.get_sample_value("aviator_stream_messages_total", {"result": "shed"}) or 0.0
    ) == shed
