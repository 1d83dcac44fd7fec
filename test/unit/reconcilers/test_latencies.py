"""Reading a policy's latencies: each source reads its own origin of the store, and
probe mode probes (into the store) only when an evaluation is due."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from reconciler_objects import make_pod, make_service

from aviator.latency.histogram import Histogram
from aviator.latency.schema import EndpointWindow, PodLoad, Snapshot
from aviator.latency.store import LatencyStore
from aviator.reconcilers.evaluation import ParsedPolicy, parse_policy
from aviator.reconcilers.latencies import (
    PROBES_PER_ROUND,
    controller_prober,
    measured_ports,
    numbered_ports,
    read_latencies,
)


def policy(**spec: object) -> ParsedPolicy:
    body = {"targetRef": {"name": "web"}, "evaluationInterval": "1s", **spec}
    return parse_policy({"metadata": {"name": "p", "namespace": "default"}, "spec": body})


def agent_snapshot(ip: str, values: list[int]) -> Snapshot:
    h = Histogram.from_values(values)
    window = EndpointWindow(ip, 8080, "server", None, h, h.count, sum(values), max(values), 0, 0)
    return Snapshot("node-a", "ebpf", 0.0, 1.0, (window,))


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[str]]]:
    hits: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        hits.append(request.path)
        await asyncio.sleep(0.02)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1], hits
    await runner.cleanup()


async def test_ebpf_policy_reads_agent_data_only() -> None:
    store = LatencyStore(window_s=10, stale_after_s=10)
    store.ingest(agent_snapshot("10.0.0.1", [5000] * 10), now=100.0)
    store.ingest_probes(
        [EndpointWindow("10.0.0.2", 8080, "server", "default/b", Histogram([1]), 1, 1, 1, 0, 0)],
        now=100.0,
        keep_s=30,
    )
    pods = [make_pod("a", "10.0.0.1"), make_pod("b", "10.0.0.2")]
    prober = controller_prober()
    try:
        got = await read_latencies(policy(), pods, store, prober, 100.0, probe=True)
    finally:
        await prober.close()
    a = got.estimate("a")
    assert a is not None and a.samples == 10 and a.source == "ebpf"
    assert got.estimate("b") is None  # the controller's probes are not this policy's
    assert got.active_p99_ms(pods) == pytest.approx(5.0, rel=0.04)


async def test_probe_policy_probes_when_due_and_reads_its_probes_only(
    server: tuple[int, list[str]],
) -> None:
    port, hits = server
    store = LatencyStore(window_s=10, stale_after_s=10)
    # Agent data of the same pod (an ebpf policy may route it too) is not read.
    store.ingest(agent_snapshot("127.0.0.1", [900_000] * 50), now=100.0)
    parsed = policy(latencySource="probe", targetPort=port, probePath="/ping")
    pods = [make_pod("a", "127.0.0.1")]
    prober = controller_prober()
    try:
        due = await read_latencies(parsed, pods, store, prober, 100.0, probe=True)
        assert hits == ["/ping"] * PROBES_PER_ROUND
        est = due.estimate("a")
        assert est is not None and est.source == "probe" and est.samples == PROBES_PER_ROUND
        # The server answers after 20 ms; a bucket's midpoint may read up to 1/32 less.
        assert 20 * (1 - 1 / 32) <= est.p50_ms < 500 and due.reported == {"a": 100.0}
        assert due.active_p99_ms(pods) == pytest.approx(est.p99_ms)
        assert list(due.sources()) == ["probe"]

        # Between evaluations: no probes, the last round still reported.
        between = await read_latencies(parsed, pods, store, prober, 101.0, probe=False)
        assert len(hits) == PROBES_PER_ROUND
        est = between.estimate("a")
        # The same round: the same estimate, as of when it was reported.
        assert est is not None and est.samples == PROBES_PER_ROUND
        assert est is due.estimate("a") and between.reported == {"a": 100.0}

        # Not probed for 3 intervals: the round aged out of the window.
        gone = await read_latencies(parsed, pods, store, prober, 103.5, probe=False)
        assert gone.estimate("a") is None and gone.active_p99_ms(pods) is None
    finally:
        await prober.close()
    agent = store.estimate("127.0.0.1", 100.0)
    assert agent is not None and agent.samples == 50  # untouched by the probes


def windows(ip: str, by_port: dict[int, list[int]]) -> Snapshot:
    out = []
    for port, values in by_port.items():
        h = Histogram.from_values(values)
        out.append(
            EndpointWindow(ip, port, "server", None, h, h.count, sum(values), max(values), 0, 0)
        )
    return Snapshot("node-a", "ebpf", 0.0, 1.0, tuple(out))


async def test_a_pods_latency_is_that_of_its_target_ports() -> None:
    # The pod serves the Service on 8080 (fast) and is scraped for metrics on 9100
    # (slow, and frequent): only 8080 is the pod's latency.
    store = LatencyStore(window_s=10, stale_after_s=10)
    store.ingest(windows("10.0.0.1", {8080: [2000] * 20, 9100: [400_000] * 200}), now=100.0)
    svc = make_service(ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    pod = make_pod("a", "10.0.0.1", container_ports=[{"name": "web", "containerPort": 8080}])
    parsed = policy()
    assert measured_ports(parsed, svc, pod) == {8080}
    prober = controller_prober()
    try:
        got = await read_latencies(parsed, [pod], store, prober, 100.0, probe=False, service=svc)
    finally:
        await prober.close()
    est = got.estimate("a")
    assert est is not None and est.samples == 20 and est.p99_ms < 3
    assert got.active_p99_ms([pod]) == pytest.approx(2.0, rel=0.05)
    # Several target ports count together; UDP ports and unresolved names do not.
    multi = make_service(
        ports=[
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "grpc", "port": 90, "targetPort": 9000},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "gone", "port": 70, "targetPort": "nope"},
        ]
    )
    assert measured_ports(parsed, multi, pod) == {8080, 9000}
    # Probe mode measures what it probes.
    assert measured_ports(policy(latencySource="probe", targetPort=7000), svc, pod) == {7000}


async def test_pods_without_data_on_a_node_with_full_maps_are_named_unmeasurable() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(agent_snapshot("10.0.0.1", [5000] * 10), now=100.0)
    store.maps.note("node-a", ("endpoints",), now=100.0)
    pods = [
        make_pod("a", "10.0.0.1"),  # measured: its entry is in the map
        make_pod("b", "10.0.0.2"),  # no data, node-a's map is full
        make_pod("c", "10.0.0.3", node="node-b"),  # no data, node-b is fine
    ]
    prober = controller_prober()
    try:
        got = await read_latencies(policy(), pods, store, prober, 101.0, probe=False)
        assert got.unmeasurable == {"b": ("node-a", ("endpoints",))}
        # A later snapshot of node-a without full maps clears it; so does staleness.
        store.maps.note("node-a", (), now=102.0)
        got = await read_latencies(policy(), pods, store, prober, 102.0, probe=False)
        assert got.unmeasurable == {}
        store.maps.note("node-a", ("h2conns",), now=103.0)
        got = await read_latencies(policy(), pods, store, prober, 109.0, probe=False)
        assert got.unmeasurable == {}
    finally:
        await prober.close()


async def test_a_policy_naming_a_load_reads_each_measured_pods_report() -> None:
    store = LatencyStore(window_s=10, stale_after_s=10)
    store.ingest(agent_snapshot("10.0.0.1", [5000] * 10), now=100.0)
    store.ingest(agent_snapshot("10.0.0.2", [5000] * 10), now=100.0)
    store.loads.note(
        "node-a",
        [PodLoad("10.0.0.1", "queue", 4.0), PodLoad("10.0.0.3", "queue", 9.0)],
        100.0,
    )
    pods = [make_pod(n, f"10.0.0.{i}") for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    load = {"metric": "queue", "port": 9090}
    prober = controller_prober()
    try:
        got = await read_latencies(
            policy(selection={"mode": "prequal", "prequal": {"load": load}}),
            pods,
            store,
            prober,
            100.0,
            probe=False,
        )
        plain = await read_latencies(policy(), pods, store, prober, 100.0, probe=False)
    finally:
        await prober.close()
    a, b = got.estimate("a"), got.estimate("b")
    assert a is not None and a.load == 4.0
    assert b is not None and b.load is None  # no report: prequal ranks it by its RIF
    assert got.estimate("c") is None  # a report alone does not make a pod measured
    plain_a = plain.estimate("a")
    assert plain_a is not None and plain_a.load is None  # not asked for: not read


async def test_pods_whose_agent_went_silent_are_named_silent_not_new() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(agent_snapshot("10.0.0.1", [5000] * 10), now=100.0)
    pods = [make_pod("a", "10.0.0.1"), make_pod("b", "10.0.0.2")]  # b: never measured
    prober = controller_prober()
    try:
        fresh = await read_latencies(policy(), pods, store, prober, 101.0, probe=False)
        quiet = await read_latencies(policy(), pods, store, prober, 106.0, probe=False)
    finally:
        await prober.close()
    assert fresh.silent == frozenset() and fresh.estimate("a") is not None
    assert quiet.silent == {"a"} and quiet.estimate("a") is None


async def test_a_new_replica_names_pods_it_has_no_data_for_warming() -> None:
    """A pod without data on a node whose agent has not reported for a window since the
    replica started may have been measured by its predecessor (LatencyStore.warming);
    one with data, or in probe mode, is not."""
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.reporters.begin(100.0)
    store.ingest(agent_snapshot("10.0.0.1", [5000] * 10), now=101.0)
    store.ingest(agent_snapshot("10.0.0.1", [5000] * 10), now=110.0)
    pods = [make_pod("a", "10.0.0.1"), make_pod("b", "10.0.0.2")]
    prober = controller_prober()
    try:
        early = await read_latencies(policy(), pods, store, prober, 102.0, probe=False)
        warm = await read_latencies(policy(), pods, store, prober, 111.0, probe=False)
        probed = await read_latencies(
            policy(latencySource="probe"), pods, store, prober, 102.0, probe=False
        )
    finally:
        await prober.close()
    assert early.warming == {"b"} and early.silent == frozenset()
    assert warm.warming == frozenset() and warm.estimate("a") is not None
    assert probed.warming == frozenset()


def test_numbered_ports_are_read_once_per_service_object() -> None:
    """A Service whose target ports are numbers measures the same ports on every pod;
    one that names a port does not (None). An update of the Service (a new object,
    same name and uid) is read afresh."""
    numbered = make_service(ports=[{"port": 80, "protocol": "TCP", "targetPort": 8080}])
    assert numbered_ports(numbered) == frozenset({8080})
    assert numbered_ports(numbered) == frozenset({8080})  # from the memo
    named = make_service(ports=[{"port": 80, "protocol": "TCP", "targetPort": "http"}])
    assert numbered_ports(named) is None
    updated = make_service(ports=[{"port": 80, "protocol": "TCP", "targetPort": 9090}])
    assert numbered_ports(updated) == frozenset({9090})
    assert numbered_ports(numbered) == frozenset({8080})
