"""What counts as one request: multi-segment responses, address families, requests in
flight, abandoned requests, and connections older than the program."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from bpf_loadgen import DelayServer, KeepAliveClient, run_clients
from bpf_snapshots import BOTH_ENDS, assert_close, delta, exact_quantile, wait_for
from conftest import TEST_BOUND_S, require_bpf_privileges

from aviator.agent.bpf import BpfLatencySource, EndpointKey
from aviator.agent.bpf.seed import listening_sockets
from aviator.testing.waiting import BPF_COMPILE_BOUND_S

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]


def test_response_larger_than_a_segment_counts_once(latency_source: BpfLatencySource) -> None:
    # 256 KiB answered in a header send and four body sends: many segments and sends.
    server = DelayServer("127.0.11.1", lambda: 0.005, body_size=256 * 1024, chunk=65536)
    server.start()
    try:
        before = latency_source.read()
        samples = run_clients(server.host, server.port, 4, 10)
        after = latency_source.read()
    finally:
        server.stop()
    for role in BOTH_ENDS:
        d = delta(before, after, EndpointKey(server.host, server.port, role))
        assert d.count == len(samples) == 40, role
        assert d.rif == 0 and d.aborted == 0
        # Latency is to the FIRST response bytes (the client's first segment), not to
        # the end of the transfer.
        assert_close(d.hist.quantile(0.5), exact_quantile(samples, 0.5))


def test_ipv6_loopback_server(latency_source: BpfLatencySource) -> None:
    server = DelayServer("::1", lambda: 0.010, family=socket.AF_INET6).start()
    try:
        before = latency_source.read()
        samples = run_clients("::1", server.port, 4, 25)
        after = latency_source.read()
    finally:
        server.stop()
    for role in BOTH_ENDS:
        d = delta(before, after, EndpointKey("::1", server.port, role))
        assert d.count == len(samples) == 100
        assert_close(d.hist.quantile(0.5), exact_quantile(samples, 0.5))


def test_dual_stack_server_keyed_by_plain_ipv4(latency_source: BpfLatencySource) -> None:
    # An AF_INET6 socket on [::] accepting IPv4 clients sees v4-mapped addresses.
    server = DelayServer("::", lambda: 0.002, family=socket.AF_INET6).start()
    try:
        before = latency_source.read()
        samples = run_clients("127.0.11.2", server.port, 2, 10)
        after = latency_source.read()
    finally:
        server.stop()
    d = delta(before, after, EndpointKey("127.0.11.2", server.port, "server"))
    assert d.count == len(samples) == 20
    assert not any(k.ip.startswith("::ffff:") for k in after)


def test_requests_in_flight_gauge(latency_source: BpfLatencySource) -> None:
    hold = threading.Event()
    server = DelayServer("127.0.11.3", lambda: 0.0, hold=hold).start()
    clients = [KeepAliveClient(server.host, server.port) for _ in range(5)]
    try:
        before = latency_source.read()
        for c in clients:
            c.send_request()
        assert server.wait_received(5)
        snap = latency_source.read()
        for role in BOTH_ENDS:
            d = delta(before, snap, EndpointKey(server.host, server.port, role))
            assert d.rif == 5, role
            assert d.count == 0
        hold.set()
        for c in clients:
            c.read_response()
        snap = latency_source.read()
        for role in BOTH_ENDS:
            d = delta(before, snap, EndpointKey(server.host, server.port, role))
            assert d.rif == 0 and d.count == 5, role
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_abandoned_requests_are_aborted_samples_of_their_open_time(
    latency_source: BpfLatencySource,
) -> None:
    hold = threading.Event()
    server = DelayServer("127.0.11.4", lambda: 0.0, hold=hold).start()
    try:
        before = latency_source.read()
        clients = [KeepAliveClient(server.host, server.port) for _ in range(3)]
        opened = time.perf_counter()
        for c in clients:
            c.send_request()
        assert server.wait_received(3)
        # Keep the requests open long enough that their samples stand out from zero.
        assert not hold.wait(0.05)
        for c in clients:
            c.close()  # gives up before the response
        open_us = (time.perf_counter() - opened) * 1e6
        server_key = EndpointKey(server.host, server.port, "server")
        client_key = EndpointKey(server.host, server.port, "client")
        snap = wait_for(
            latency_source,
            lambda s: (
                delta(before, s, server_key).aborted == 3
                and delta(before, s, client_key).aborted == 3
            ),
        )
        # The late responses (written to half-closed sockets) are not samples.
        hold.set()
        server.stop()
        snap = latency_source.read()
        for key in (server_key, client_key):
            d = delta(before, snap, key)
            # Each abandoned request is one sample of the time it was open: at least
            # the 50 ms held, at most the client's own open-to-close time (bucket
            # midpoints are within 3.2 % of the truth).
            assert (d.aborted, d.count, d.hist.count, d.rif) == (3, 3, 3, 0), key
            bounds = d.hist.quantiles([0.01, 1.0])
            assert bounds is not None, key
            fastest, slowest = bounds
            assert 50_000 * 0.968 <= fastest <= slowest <= open_us * 1.032, (key, d)
    finally:
        server.stop()


@pytest.mark.timeout(BPF_COMPILE_BOUND_S)  # loads a program of its own
def test_connections_older_than_the_program() -> None:
    require_bpf_privileges()
    server = DelayServer("127.0.12.1", lambda: 0.010).start()
    clients = [KeepAliveClient(server.host, server.port) for _ in range(4)]
    try:
        for c in clients:
            c.request()  # the connections are established and used before loading
        assert (b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 12, 1]), server.port) in (
            listening_sockets()
        )
        with BpfLatencySource.load() as source:  # the agent's map sizes (see conftest)
            samples = [c.request() for _ in range(20) for c in clients]
            snap = source.read()
    finally:
        for c in clients:
            c.close()
        server.stop()
    ours = {k: v for k, v in snap.items() if k.ip == "127.0.12.1"}
    # Server role from the seeded listening port, client role from the rest; no socket
    # misclassified (a client's ephemeral port would show up as a "server" endpoint).
    assert set(ours) == {
        EndpointKey("127.0.12.1", server.port, "server"),
        EndpointKey("127.0.12.1", server.port, "client"),
    }
    for key, counters in ours.items():
        d = delta({}, snap, key)
        assert counters.count == len(samples) == 80, key
        for q in (0.5, 0.99):
            assert_close(d.hist.quantile(q), exact_quantile(samples, q))


def test_exact_counts_under_concurrency(latency_source: BpfLatencySource) -> None:
    # Zero think time: sends and receives of many sockets race on both CPUs.
    server = DelayServer("127.0.11.5", lambda: 0.0).start()
    try:
        before = latency_source.read()
        samples = run_clients(server.host, server.port, 8, 150)
        after = latency_source.read()
    finally:
        server.stop()
    for role in BOTH_ENDS:
        d = delta(before, after, EndpointKey(server.host, server.port, role))
        assert (d.count, d.hist.count, d.aborted, d.rif) == (len(samples), 1200, 0, 0), role


def test_pipelined_requests_count_as_one(latency_source: BpfLatencySource) -> None:
    """The documented limit: requests sent before the first answer merge into one."""
    server = DelayServer("127.0.11.6", lambda: 0.002).start()
    client = KeepAliveClient(server.host, server.port)
    try:
        before = latency_source.read()
        client.sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        client.read_response()
        client.read_response()
        after = latency_source.read()
    finally:
        client.close()
        server.stop()
    for role in BOTH_ENDS:
        d = delta(before, after, EndpointKey(server.host, server.port, role))
        assert (d.count, d.rif) == (1, 0), role


def test_oldest_open_request_age(latency_source: BpfLatencySource) -> None:
    """Each endpoint reports how long its oldest open request has been waiting, against
    the program's clock, and nothing once it is answered."""
    hold = threading.Event()
    server = DelayServer("127.0.11.7", lambda: 0.0, hold=hold).start()
    client = KeepAliveClient(server.host, server.port)
    try:
        opened = time.monotonic()
        client.send_request()
        assert server.wait_received(1)
        assert not hold.wait(0.08)
        snap = latency_source.read()
        waited_us = (time.monotonic() - opened) * 1e6
        for role in BOTH_ENDS:
            age = snap[EndpointKey(server.host, server.port, role)].oldest_open_us
            assert 80_000 <= age <= waited_us, role
        hold.set()
        client.read_response()
        snap = latency_source.read()
        for role in BOTH_ENDS:
            assert snap[EndpointKey(server.host, server.port, role)].oldest_open_us == 0, role
    finally:
        client.close()
        server.stop()
