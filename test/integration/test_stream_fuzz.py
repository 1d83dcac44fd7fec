"""Hypothesis against the real receiver (an in-process controller on the real control
plane), over one authenticated stream: arbitrary JSON, near-valid snapshots and raw
bytes. Every frame is answered as the schema says (an error exactly when the frame is
not a valid snapshot of the token's node), the connection survives them all, and the
store never holds more than its bounds.

The controller runs on an event loop of its own thread; each example sends its frame,
then a sentinel whose error is unique, and reads the answers up to that sentinel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration_support import NODE, create_pod, pod_token, running_controller, stream_url

from aviator.controller.app import ControllerApp
from aviator.kube import KubeClient
from aviator.latency.limits import StreamLimits
from aviator.latency.quota import StoreLimits
from aviator.latency.schema import SchemaError, parse_snapshot
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

MY_POD = "10.95.0.1"
OTHER_POD = "10.95.1.1"
IPS = [MY_POD, OTHER_POD, "10.95.9.9", "::ffff:10.95.0.1", "fd00::1", "not-an-ip", ""]
LIMITS = StoreLimits(endpoints_per_agent=64, endpoints=96, buckets_per_agent=4096, buckets=6000)


@dataclass
class Target:
    """The stream as an agent holds it: a reader always receiving (so the server's
    heartbeat pings are answered while the fuzzer thinks), answers queued."""

    loop: asyncio.AbstractEventLoop
    app: ControllerApp
    ws: aiohttp.ClientWebSocketResponse
    sent: int = 0
    answers: asyncio.Queue[aiohttp.WSMessage] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            await self.answers.put(msg)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return

    def exchange(self, frame: str | bytes) -> list[dict[str, Any]]:
        """Send `frame`, then a sentinel; the answers to `frame`."""
        return asyncio.run_coroutine_threadsafe(self._exchange(frame), self.loop).result(60)

    async def _exchange(self, frame: str | bytes) -> list[dict[str, Any]]:
        self.sent += 1
        sentinel = -float(self.sent)
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)
        await self.ws.send_str(json.dumps(snapshot_body(window_s=sentinel)))
        answers: list[dict[str, Any]] = []
        while True:
            msg = await asyncio.wait_for(self.answers.get(), 30)
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the stream ended: {msg}"
            answer = json.loads(msg.data)
            if answer.get("error", "").startswith(f"window_s: {sentinel} "):
                return answers
            answers.append(answer)


def snapshot_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "kind": "snapshot",
        "node": NODE,
        "source": "ebpf",
        "time": 1.0,
        "window_s": 1.0,
        "endpoints": [],
    }
    body.update(changes)
    return body


@pytest.fixture(scope="module")
def target(control_plane: ControlPlane, crd: None) -> Iterator[Target]:
    ns = f"fuzz-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def setup() -> Target:
        kube = await stack.enter_async_context(await KubeClient.load(str(control_plane.kubeconfig)))
        await create_pod(kube, ns, "mine", MY_POD, {"app": "fuzz"}, node=NODE)
        await create_pod(kube, ns, "theirs", OTHER_POD, {"app": "fuzz"}, node="fuzz-other-node")
        token = await pod_token(kube, ns, NODE)
        app = await stack.enter_async_context(
            running_controller(
                control_plane,
                ns,
                store_limits=LIMITS,
                stream_limits=StreamLimits(messages_per_s=1e6, messages_burst=10**6),
                latency_window_s=600.0,
                latency_stale_after_s=600.0,
            )
        )
        await app.factory.wait_for_cache_sync()
        http = await stack.enter_async_context(aiohttp.ClientSession())
        ws = await stack.enter_async_context(
            http.ws_connect(stream_url(app), headers={"Authorization": f"Bearer {token}"})
        )
        target = Target(loop, app, ws)
        target.start_reading()
        return target

    fuzz = asyncio.run_coroutine_threadsafe(setup(), loop).result(120)
    try:
        yield fuzz
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def expected_error(frame: str | bytes) -> str | None:
    """The error the receiver must answer `frame` with, None when it must take it."""
    try:
        snap = parse_snapshot(frame)
    except SchemaError as exc:
        return str(exc)
    if snap.node != NODE:
        return f"node: {snap.node!r} is not the token's node {NODE!r}"
    return None


def check(target: Target, frame: str | bytes) -> None:
    answers = target.exchange(frame)
    errors = [a["error"] for a in answers if not a.get("error", "").startswith("refused: ")]
    expected = expected_error(frame)
    assert errors == ([] if expected is None else [expected])
    store = target.app.store
    for owner in (NODE, "fuzz-other-node"):
        usage = store.usage(owner)
        assert usage.endpoints <= LIMITS.endpoints_per_agent
        assert usage.buckets <= LIMITS.buckets_per_agent
    assert store.total.endpoints <= LIMITS.endpoints
    assert store.total.buckets <= LIMITS.buckets
    assert store.usage("fuzz-other-node").endpoints == 0  # nothing spoke for it


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)

counts = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=-5, max_value=2**66),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)
hist = st.dictionaries(
    st.one_of(st.integers(0, 470).map(str), st.sampled_from(["-1", "abc", "1.5", "", "٣"])),
    counts,
    max_size=40,
)
endpoint = st.fixed_dictionaries(
    {
        "ip": st.one_of(st.sampled_from(IPS), json_values),
        "port": st.one_of(st.integers(0, 70000), json_values),
        "role": st.sampled_from(["server", "client", "other"]),
        "pod": st.one_of(st.none(), st.text(max_size=10)),
        "hist": st.one_of(hist, json_values),
        "count": counts,
        "sum_us": counts,
        "max_us": counts,
        "rif": counts,
        "aborted": counts,
    }
)
near_valid = st.builds(
    lambda eps, node, source, window, drop: {
        k: v
        for k, v in snapshot_body(endpoints=eps, node=node, source=source, window_s=window).items()
        if k != drop
    },
    st.lists(endpoint, max_size=12),
    st.sampled_from([NODE, NODE, NODE, "fuzz-other-node", ""]),
    st.sampled_from(["ebpf", "probe", "magic"]),
    st.one_of(st.just(1.0), st.floats(allow_nan=False, allow_infinity=False)),
    st.sampled_from([None, None, None, "v", "kind", "endpoints", "time"]),
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(json_values)
def test_arbitrary_json(target: Target, value: Any) -> None:
    check(target, json.dumps(value))


@FUZZ
@given(near_valid)
def test_near_valid_snapshots(target: Target, body: dict[str, Any]) -> None:
    check(target, json.dumps(body))


@settings(FUZZ, max_examples=60)
@given(st.binary(max_size=200))
def test_raw_bytes(target: Target, data: bytes) -> None:
    check(target, data)


def test_the_stream_still_works_after_the_fuzz(target: Target) -> None:
    async def forget() -> None:  # room under the bounds the fuzz may have reached
        target.app.store.forget(MY_POD)

    asyncio.run_coroutine_threadsafe(forget(), target.loop).result(10)
    ep = {
        "ip": MY_POD,
        "port": 1,
        "role": "server",
        "pod": None,
        "hist": {"100": 3},
        "count": 3,
        "sum_us": 300,
        "max_us": 100,
        "rif": 0,
        "aborted": 0,
    }
    check(target, json.dumps(snapshot_body(endpoints=[ep])))
    app = target.app
    assert app.store.estimate(MY_POD, app.now(), port=1) is not None
    assert app.store.estimate(OTHER_POD, app.now()) is None
