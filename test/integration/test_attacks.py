"""Attacks on the latency stream, against the real receiver (an in-process controller)
and the real control plane: what a holder of a valid agent token, or of none, can do
to the controller, with a figure for each (printed as `FIGURE name: value`).

The tokens are those a real agent has: bound to a pod of the agent's ServiceAccount
on its node, as the kubelet mints the DaemonSet's projected token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import itertools
import json
import secrets
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from integration_support import (
    NODE,
    NoSource,
    TestAgent,
    create_pod,
    eventually,
    pod_token,
    request_token,
    running_controller,
    snapshot,
    stream_url,
)
from prometheus_client import REGISTRY

from aviator.agent.app import Agent
from aviator.agent.config import AgentConfig
from aviator.agent.prober import NodeProber
from aviator.kube import KubeClient
from aviator.kube.resources import PODS, SERVICEACCOUNTS
from aviator.latency.histogram import NUM_BUCKETS
from aviator.latency.schema import MAX_MESSAGE_BYTES
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).resolve().parents[2] / "config"

OTHER_NODE = "attack-node-b"


def figure(name: str, value: float, unit: str) -> None:
    print(f"FIGURE {name}: {value:.3f} {unit}")


def refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("aviator_stream_endpoints_refused_total", {"reason": reason})
    return value or 0.0


async def reply(ws: aiohttp.ClientWebSocketResponse, within_s: float = 10) -> dict[str, Any]:
    msg = await ws.receive_json(timeout=within_s)
    assert isinstance(msg, dict)
    return msg


async def test_a_forged_report_cannot_change_another_nodes_pod(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    """The agent of node B reports node A's slow pod as instant, under its own node's
    name and under A's: the pod's latency stays what A's agent measures."""
    ns = namespace
    await create_pod(kube, ns, "victim", "10.80.0.1", {"app": "victim"}, node=NODE)
    await create_pod(kube, ns, "b-pod", "10.80.1.1", {"app": "b"}, node=OTHER_NODE)
    token_a = await pod_token(kube, ns, NODE)
    token_b = await pod_token(kube, ns, OTHER_NODE)
    async with running_controller(control_plane, ns) as app:
        url = stream_url(app)

        async def victim_p99() -> float | None:
            est = app.store.estimate("10.80.0.1", app.now())
            return est.p99_ms if est is not None and est.p99_ms > 3000 else None

        async with TestAgent(url, token_a) as agent_a:
            agent_a.latency_ms = {"10.80.0.1": 3700.0}
            await eventually(victim_p99)
            before = refused("other_node")
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(url, headers={"Authorization": f"Bearer {token_b}"}) as ws,
            ):
                # Claiming to be node A: the whole snapshot is refused.
                started = time.monotonic()
                await ws.send_str(snapshot({"10.80.0.1": 0.0}, node=NODE))
                answer = await reply(ws)
                figure("forged node claim refused in", (time.monotonic() - started) * 1000, "ms")
                assert "is not the token's node" in answer["error"]
                # As itself, about A's pod (with its own pod, which is fine): refused.
                for _ in range(10):
                    await ws.send_str(
                        snapshot({"10.80.0.1": 0.0, "10.80.1.1": 5.0}, node=OTHER_NODE)
                    )
                answer = await reply(ws)
                assert answer["error"] == "refused: other_node 1"

            async def b_pod_measured() -> bool:
                return app.store.estimate("10.80.1.1", app.now()) is not None

            await eventually(b_pod_measured)
            assert refused("other_node") - before == 10
            est = app.store.estimate("10.80.0.1", app.now())
            assert est is not None and est.p50_ms > 3000 and est.p99_ms > 3000
            figure("victim p99 after 11 forged reports", est.p99_ms, "ms")


# --- floods -------------------------------------------------------------------------


def junk_jwt(i: int) -> str:
    """A token shaped like a ServiceAccount JWT (so only the API server can refuse it)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": f"junk-{i}", "exp": time.time() + 3600, "nonce": secrets.token_hex(8)}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.{secrets.token_urlsafe(32)}"


async def handshake(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, float]:
    """(HTTP status of the upgrade, seconds it took)."""
    started = time.monotonic()
    try:
        async with http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}):
            return 101, time.monotonic() - started
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, time.monotonic() - started


async def connect(
    http: aiohttp.ClientSession, url: str, token: str
) -> aiohttp.ClientWebSocketResponse:
    """A stream, dialled again (as an agent does) while the answer is 429 or 503.

    Bounded generously: floods share the machine with the TLS handshakes and token
    reviews of their own connections (under tracemalloc, on a machine that may be busy
    with more: a fresh-clone run at load 10 saw the API server's TokenReviews time out
    for 3 minutes), and how fast one gets in is not what is tested."""
    async with asyncio.timeout(420):
        while True:
            try:
                return await http.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status not in (429, 503):
                    raise
            await asyncio.sleep(0.5)


async def pump_replies(
    ws: aiohttp.ClientWebSocketResponse, into: asyncio.Queue[dict[str, Any] | None]
) -> None:
    """Every reply into `into`, then None when the server hangs up."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await into.put(json.loads(msg.data))
    await into.put(None)


def bound_pod(token: str) -> str:
    """The name of the pod a ServiceAccount token is bound to (from its claims)."""
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return str(claims["kubernetes.io"]["pod"]["name"])


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_junk_tokens_cost_few_reviews_and_never_delay_lease_renewals(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    """For 6 s, 100 clients at a time connect with junk tokens (JWT-shaped, so only a
    TokenReview could refuse them, or not even that) while the replica leads: few
    reviews are spent, the rest is refused early, and every Lease renewal in the
    meantime is on time."""
    ns = namespace
    renewals: list[tuple[float, float]] = []  # (start, seconds) of each Lease write
    async with running_controller(
        control_plane, ns, leader_elect=True, retry_period=0.5, renew_deadline=4.0
    ) as app:
        lease_request = app.lease_client.request

        async def timed(method: str, path: str, **kw: Any) -> Any:
            started = time.monotonic()
            try:
                return await lease_request(method, path, **kw)
            finally:
                if method == "PUT":
                    renewals.append((started, time.monotonic() - started))

        app.lease_client.request = timed  # type: ignore[method-assign]

        async def leading() -> bool:
            return app.is_leader() and len(renewals) >= 2

        await eventually(leading)
        url = stream_url(app)
        # 100 at a time, for 6 s: three in four JWT-shaped, one in four not even that.
        results: list[tuple[int, float]] = []
        flood_started = time.monotonic()

        async def attacker(http: aiohttp.ClientSession, who: int) -> None:
            i = 0
            while time.monotonic() - flood_started < 6.0:
                token = junk_jwt(who * 100_000 + i) if i % 4 else f"junk-{who}-{i}"
                results.append(await handshake(http, url, token))
                i += 1

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(attacker(http, w) for w in range(100)))
        flood_s = time.monotonic() - flood_started
        during = [d for at, d in renewals if flood_started <= at <= flood_started + flood_s]
        statuses = Counter(status for status, _ in results)
        figure("junk-token flood: connections", len(results), "")
        figure("junk-token flood: duration", flood_s, "s")
        figure("junk-token flood: TokenReviews sent", app.authenticator.reviews, "")
        figure("junk-token flood: refused 401", statuses[401], "")
        figure("junk-token flood: refused 429", statuses[429], "")
        figure(
            "junk-token flood: median time to refuse",
            quantile([d for _, d in results], 0.5) * 1000,
            "ms",
        )
        figure("junk-token flood: Lease renewals during", len(during), "")
        figure("junk-token flood: slowest renewal", max(during, default=0.0) * 1000, "ms")
        assert statuses[101] == 0 and set(statuses) <= {401, 429}
        # Reviews: one address gets its burst and its rate, nothing more.
        limits = app.options.stream_limits
        assert app.authenticator.reviews <= (
            limits.source_reviews_burst + limits.source_reviews_per_s * flood_s + 1
        )
        assert app.is_leader()
        assert during, "no renewal during the flood"
        assert max(during) < 1.0
        starts = [at for at, _ in renewals if flood_started <= at <= flood_started + flood_s]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert max(gaps, default=0.0) < 2.0, gaps


async def test_a_flood_of_new_endpoints_is_held_to_the_store_bounds(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    """Nine agents (nodes), one pod each, report every port of their pod with a
    histogram in every bucket, as fast as they are let: the store holds no more than
    its bounds (default limits), and says why it refuses the rest."""
    ns = namespace
    nodes = [f"flood-node-{i}" for i in range(9)]
    ips = [f"10.81.0.{i + 1}" for i in range(9)]
    for i, (node, ip) in enumerate(zip(nodes, ips, strict=True)):
        await create_pod(kube, ns, f"pod-{i}", ip, {"app": "flood"}, node=node)
    tokens = [await pod_token(kube, ns, node) for node in nodes]
    dense = {str(b): 7 for b in range(NUM_BUCKETS)}
    # A window long enough that nothing leaves it during the flood.
    async with running_controller(
        control_plane, ns, latency_window_s=600.0, latency_stale_after_s=600.0
    ) as app:
        url = stream_url(app)
        limits = app.options.store_limits
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            before = {
                r: refused(r)
                for r in ("agent_endpoints", "agent_buckets", "store_endpoints", "store_buckets")
            }
            started = time.monotonic()

            def frames(node: str, ip: str) -> list[str]:
                """Thin new endpoints past the agent's bound, then dense histograms into
                240 of them, message after message; then "sync" (answered after them)."""
                plan = [range(1, 4001), range(4001, 4201)] + [range(1, 241)] * 4
                out = []
                for ports in plan:
                    hist = dense if len(ports) == 240 else {"100": 1}
                    eps = [
                        {
                            "ip": ip,
                            "port": port,
                            "role": "server",
                            "pod": None,
                            "hist": hist,
                            "count": 1,
                            "sum_us": 1,
                            "max_us": 1,
                            "rif": 0,
                            "aborted": 0,
                        }
                        for port in ports
                    ]
                    body = {
                        "v": 1,
                        "kind": "snapshot",
                        "node": node,
                        "source": "ebpf",
                        "time": time.time(),
                        "window_s": 1.0,
                        "endpoints": eps,
                    }
                    out.append(json.dumps(body, separators=(",", ":")))
                return [*out, "sync"]

            async def flood(node: str, ip: str, token: str) -> None:
                """Send the frames until "sync" is answered, reading while sending (as an
                agent does, so heartbeat pings are answered) and dialling again if the
                server hangs up (a busy machine can miss a heartbeat): what is tested is
                what the store holds, whatever the number of tries."""
                nonlocal redials
                async with aiohttp.ClientSession() as http:
                    while True:
                        async with await connect(http, url, token) as ws:
                            replies: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
                            reader = asyncio.create_task(pump_replies(ws, replies))
                            try:
                                for frame in frames(node, ip):
                                    await ws.send_str(frame)
                                async with asyncio.timeout(300):
                                    while (answer := await replies.get()) is not None:
                                        if not answer.get("error", "").startswith("refused"):
                                            return
                            except ConnectionError:
                                pass
                            finally:
                                reader.cancel()
                        redials += 1

            redials = 0
            await asyncio.gather(
                *(flood(n, ip, t) for n, ip, t in zip(nodes, ips, tokens, strict=True))
            )
            elapsed = time.monotonic() - started
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        total = app.store.total
        figure("endpoint flood: duration", elapsed, "s")
        figure("endpoint flood: streams dialled again", redials, "")
        figure("endpoint flood: endpoints held", total.endpoints, "")
        figure("endpoint flood: buckets held", total.buckets, "")
        figure("endpoint flood: memory held", held / 2**20, "MiB")
        for r, n in before.items():
            figure(f"endpoint flood: refused {r}", refused(r) - n, "")
        assert total.endpoints <= limits.endpoints
        assert total.buckets <= limits.buckets
        for node in nodes:
            usage = app.store.usage(node)
            assert usage.endpoints <= limits.endpoints_per_agent
            assert usage.buckets <= limits.buckets_per_agent
        assert refused("store_endpoints") > before["store_endpoints"]
        assert refused("agent_buckets") + refused("store_buckets") > (
            before["agent_buckets"] + before["store_buckets"]
        )
        # The bound on memory, from the bounds on what is held (docs/controller.md).
        assert held < (limits.endpoints * 2600 + limits.buckets * 200)


async def test_oversize_frames_end_the_connection_unread(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    ns = namespace
    token = await pod_token(kube, ns, NODE)
    async with running_controller(control_plane, ns) as app:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(stream_url(app), headers={"Authorization": f"Bearer {token}"}) as ws,
        ):
            started = time.monotonic()
            await ws.send_str("[" + "0," * (MAX_MESSAGE_BYTES // 2) + "0]")
            closing = await ws.receive(timeout=10)
            figure("oversize frame refused in", (time.monotonic() - started) * 1000, "ms")
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1009
        # The largest frame that is allowed: taken, refused for its content.
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(stream_url(app), headers={"Authorization": f"Bearer {token}"}) as ws,
        ):
            started = time.monotonic()
            await ws.send_str("[" + "0," * (MAX_MESSAGE_BYTES // 2 - 2) + "0]")
            answer = await reply(ws)
            figure("largest frame of junk refused in", (time.monotonic() - started) * 1000, "ms")
            assert answer["error"] == "message is not a JSON object"


# --- tokens ---------------------------------------------------------------------------


async def test_wrong_audience_expired_and_revoked_tokens(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    ns = namespace
    agent = await pod_token(kube, ns, NODE, audiences=["aviator"])
    wrong = await pod_token(kube, ns, NODE, audiences=["somebody-else"])
    async with running_controller(
        control_plane,
        ns,
        agent_audiences=("aviator",),
        stream_reauth_after_s=0.2,
        token_cache_ttl_s=0.5,
    ) as app:
        url = stream_url(app)
        async with aiohttp.ClientSession() as http:
            status, took = await handshake(http, url, wrong)
            figure("wrong audience refused in", took * 1000, "ms")
            assert status == 401 and app.authenticator.reviews == 0  # refused unreviewed
            # Expired: the replica's clock is two hours ahead of the token's expiry.
            app.authenticator._wall_clock = lambda: time.time() + 7200
            status, took = await handshake(http, url, agent)
            figure("expired token refused in", took * 1000, "ms")
            assert status == 401 and app.authenticator.reviews == 0
            app.authenticator._wall_clock = time.time
            # Revoked: the pod the token is bound to is deleted; an open stream ends
            # at its next re-check, a new one is refused by the API server.
            async with http.ws_connect(url, headers={"Authorization": f"Bearer {agent}"}) as ws:
                await kube.delete(PODS, bound_pod(agent), ns, body={"gracePeriodSeconds": 0})
                revoked = time.monotonic()
                answer: dict[str, Any] = {}
                async with asyncio.timeout(60):
                    while "no longer accepted" not in answer.get("error", ""):
                        await ws.send_str(snapshot({}, node=NODE))
                        with contextlib.suppress(TimeoutError):
                            answer = await ws.receive_json(timeout=0.5)
                figure("revoked token's stream ended in", time.monotonic() - revoked, "s")
                assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            status, _ = await handshake(http, url, agent)
            assert status == 401


# --- reading per-pod data ---------------------------------------------------------------


async def test_per_pod_data_only_to_those_rbac_allows(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, crd: None
) -> None:
    """The agent's /latency, /status, /metrics and the controller's /metrics answer
    only a token whose ServiceAccount may `get` them (config/rbac/metrics-reader.yaml);
    the probes' /healthz and /readyz stay open."""
    ns = namespace
    control_plane.kubectl("apply", "-f", str(CONFIG / "rbac" / "metrics-reader.yaml"))
    control_plane.kubectl(
        "create",
        "clusterrolebinding",
        f"scraper-{ns}",
        "--clusterrole=aviator-metrics-reader",
        f"--serviceaccount={ns}:scraper",
    )
    for account in ("scraper", "nobody"):
        await kube.create(SERVICEACCOUNTS, {"metadata": {"name": account}}, ns)
    scraper = await request_token(kube, ns, "scraper")
    nobody = await request_token(kube, ns, "nobody")
    config = AgentConfig(node=NODE, http_host="127.0.0.1", http_port=0, report_interval_s=0.2)
    agent = Agent(config, kube, NoSource(), NodeProber(min_samples=0))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        async with asyncio.timeout(30):
            await agent.started.wait()
        async with running_controller(control_plane, ns, secure_serving=True) as app:
            targets = [
                (f"https://127.0.0.1:{agent.http_port}", ("/latency", "/status", "/metrics")),
                (f"https://127.0.0.1:{app.http_port}", ("/metrics",)),
            ]
            async with aiohttp.ClientSession() as http:

                async def get(url: str, token: str | None) -> int:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    # The agent's certificate is its own: scrapers skip verifying it.
                    async with http.get(url, headers=headers, ssl=False) as resp:
                        return resp.status

                for base, paths in targets:
                    for path in paths:
                        started = time.monotonic()
                        assert await get(base + path, None) == 401
                        figure(
                            f"unauthenticated {path} refused in",
                            (time.monotonic() - started) * 1000,
                            "ms",
                        )
                        assert await get(base + path, "junk") == 401
                        assert await get(base + path, nobody) == 403
                        assert await get(base + path, scraper) == 200, base + path
                    for path in ("/healthz", "/readyz"):
                        assert await get(base + path, None) in (200, 503)
    finally:
        stop.set()
        await task


# --- a hostile controller -----------------------------------------------------------------


async def test_replies_of_any_shape_never_stop_an_agent(kube: KubeClient, tmp_path: Path) -> None:
    """A "controller" answering every snapshot with a JSON array, a number, null, bytes
    and junk (the known case killed the stream task for good): the agent logs them and
    keeps streaming on the same connection."""
    received: list[str] = []
    got = asyncio.Event()
    junk = ["[1, 2, 3]", "42", "null", '"text"', "{", '{"error": [1]}']

    async def hostile(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append(msg.data)
            got.set()
            await ws.send_str(junk[len(received) % len(junk)])
            await ws.send_bytes(b"\xff\x00")
        return ws

    server = web.Application()
    server.router.add_get("/v1/stream", hostile)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/stream"
    token = tmp_path / "token"
    token.write_text("t")
    config = AgentConfig(
        node=NODE,
        http_host="127.0.0.1",
        http_port=0,
        report_interval_s=0.05,
        secure_serving=False,
        controller_urls=[url],
        token_files=[str(token)],
    )
    agent = Agent(config, kube, NoSource(), NodeProber(min_samples=0))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        async with asyncio.timeout(60):
            while len(received) < 3 * len(junk):
                got.clear()
                await got.wait()
        conn = agent.stream.connections[url]
        figure("snapshots delivered through junk replies", len(received), "")
        assert conn.connects == 1 and conn.connected
        assert conn.errors_received >= 2 * len(junk)
    finally:
        stop.set()
        await task
        await runner.cleanup()
