"""The loads pods report: which pods the agent reads, how it reads the exposition,
and the bounds on its scrapes (against local HTTP servers)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from aviator.agent.loads import LoadTarget, gauge_values, load_targets
from aviator.agent.loadscraper import LoadScraper
from aviator.latency.schema import PodLoad

LOAD = {"metric": "app_queue_length", "port": 9090}


def policy(name: str, service: str, load: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRef": {"name": service}}
    if load is not None:
        spec["selection"] = {"mode": "prequal", "prequal": {"load": load}}
    return {"metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def pod(name: str, ip: str, app: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {},
        "status": {"phase": "Running", "podIP": ip},
    }


SERVICES = {n: {"metadata": {"name": n}, "spec": {"selector": {"app": n}}} for n in ("a", "b")}


def lookup(_ns: str, name: str) -> dict[str, Any] | None:
    return SERVICES.get(name)


def test_only_pods_a_policy_asks_are_read() -> None:
    pods = [pod("a-1", "10.0.0.1", "a"), pod("b-1", "10.0.0.2", "b")]
    policies = [
        policy("with", "a", LOAD),
        policy("kv", "a", {**LOAD, "metric": "kv_usage"}),
        policy("without", "b", None),
        policy("broken", "b", {"metric": "9bad", "port": 9090}),
    ]
    (target,) = load_targets(policies, lookup, pods)
    assert target == LoadTarget(
        "10.0.0.1", 9090, "/metrics", frozenset({"app_queue_length", "kv_usage"})
    )
    assert target.url == "http://10.0.0.1:9090/metrics"
    assert LoadTarget("::1", 80, "/m", frozenset()).url == "http://[::1]:80/m"
    assert load_targets([policy("without", "a", None)], lookup, pods) == []


EXPOSITION = """\
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 3.0
vllm:num_requests_waiting{model_name="b",note="x} y\\" z"} 2 1700000000000
vllm:num_requests_waiting_total 99
other 5
vllm:gpu_cache_usage_perc 0.25
bad{unclosed 4
nan_one NaN
neg -1
# EOF
after 1
"""


def test_the_wanted_gauges_are_summed_over_their_series() -> None:
    wanted = {"vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc", "nan_one", "neg", "after"}
    assert gauge_values(EXPOSITION, wanted) == {
        "vllm:num_requests_waiting": 5.0,
        "vllm:gpu_cache_usage_perc": 0.25,
    }


@given(st.text(max_size=400), st.sets(st.text(min_size=1, max_size=5), max_size=3))
def test_any_text_yields_finite_non_negative_values_of_wanted_metrics(
    text: str, wanted: set[str]
) -> None:
    values = gauge_values(text, wanted)
    assert set(values) <= wanted
    assert all(math.isfinite(v) and v >= 0 for v in values.values())


@given(st.lists(st.tuples(st.sampled_from(["q", "r"]), st.integers(0, 10**6)), max_size=20))
def test_sums_are_exact_for_integer_series(series: list[tuple[str, int]]) -> None:
    text = "\n".join(f'{name}{{i="{i}"}} {v}' for i, (name, v) in enumerate(series))
    expected: dict[str, float] = {}
    for name, v in series:
        expected[name] = expected.get(name, 0.0) + v
    assert gauge_values(text, {"q", "r"}) == expected


@pytest.fixture
async def pods_http() -> AsyncIterator[tuple[int, dict[str, int]]]:
    """A metrics server on 127.0.0.1 with a good, a slow, a huge and a failing path.
    The slow one answers only when the fixture ends: a scrape of it ends by its
    time-out or not at all."""
    calls = {"max_concurrent": 0, "now": 0, "slow_answered": 0}
    release = asyncio.Event()

    async def good(_r: web.Request) -> web.Response:
        calls["now"] += 1
        calls["max_concurrent"] = max(calls["max_concurrent"], calls["now"])
        await asyncio.sleep(0.02)  # a server's time to answer, so scrapes overlap
        calls["now"] -= 1
        return web.Response(text="app_queue_length 7\n")

    async def slow(_r: web.Request) -> web.Response:
        await release.wait()
        calls["slow_answered"] += 1
        return web.Response(text="app_queue_length 1\n")

    async def huge(_r: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(_r)
        for _ in range(64):
            await resp.write(b"#" * 65536 + b"\n")
        return resp

    async def failing(_r: web.Request) -> web.Response:
        return web.Response(status=500, text="app_queue_length 3\n")

    app = web.Application()
    for path, handler in (("/good", good), ("/slow", slow), ("/huge", huge), ("/fail", failing)):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    for host in [f"127.0.0.{i}" for i in range(2, 7)] + [f"127.0.1.{i}" for i in (1, 2, 3)]:
        await web.TCPSite(runner, host, port).start()  # a pod per loopback address
    yield port, calls
    release.set()
    await runner.cleanup()


def target(port: int, path: str, ip: str = "127.0.0.1") -> LoadTarget:
    return LoadTarget(ip, port, path, frozenset({"app_queue_length"}))


async def test_a_round_reads_good_pods_and_bounds_the_rest(
    pods_http: tuple[int, dict[str, int]],
) -> None:
    port, calls = pods_http
    # The time-out is generous (a good pod answers in 20 ms, on a busy machine later):
    # the slow pod never answers, so the round ends only if its time-out ends it.
    scraper = LoadScraper(timeout_s=1.0, concurrency=2, max_bytes=1024 * 1024)
    try:
        targets = [target(port, "/good", f"127.0.0.{i}") for i in range(1, 7)]
        targets += [target(port, "/slow", "127.0.1.1"), target(port, "/huge", "127.0.1.2")]
        targets.append(target(port, "/fail", "127.0.1.3"))
        async with asyncio.timeout(30):  # a bound on a broken time-out, not a figure
            loads = await scraper.round(targets)
        assert calls["slow_answered"] == 0  # ended by the time-out
        assert sorted(loads, key=lambda x: x.ip) == [
            PodLoad(f"127.0.0.{i}", "app_queue_length", 7.0) for i in range(1, 7)
        ]
        assert calls["max_concurrent"] <= 2
        assert scraper.failures == 3 and scraper.scrapes == 9
        assert scraper.current() == loads
    finally:
        await scraper.close()


async def test_rounds_never_overlap_and_no_targets_forget(
    pods_http: tuple[int, dict[str, int]],
) -> None:
    port, _ = pods_http
    scraper = LoadScraper(timeout_s=1.0)  # generous for the good pod on a busy machine
    try:
        scraper.start([target(port, "/slow")])
        first = scraper._task
        scraper.start([target(port, "/good")])
        assert scraper._task is first  # still running: no second round
        assert first is not None
        await first
        scraper.start([target(port, "/good")])
        assert scraper._task is not None
        await scraper._task
        assert scraper.current() == (PodLoad("127.0.0.1", "app_queue_length", 7.0),)
        scraper.start([])
        assert scraper.current() == ()
    finally:
        await scraper.close()
