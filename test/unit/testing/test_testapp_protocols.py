"""The test app in its h2c and gRPC modes (and HTTP/1.1's errors): every mode answers
with the configured latency and status, errors are answered at once, and the share of
errors follows ERROR_RATE; the app's own counts match what the clients saw."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import grpc.aio
import pytest
from apps_support import running_app

from aviator.testing.grpcclient import GrpcClient
from aviator.testing.h2client import H2cClient
from aviator.testing.pool import parse_response_head

CONTROL = "/aviator.testapp.TestApp/Control"


async def _http1(port: int, path: str, method: str = "GET") -> tuple[int, bytes, float]:
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return parse_response_head(head + b"\r\n\r\n")[0], body, time.monotonic() - start


async def _grpc_control(port: int, query: str) -> dict[str, object]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await channel.unary_unary(CONTROL)(query.encode(), timeout=5)
    out: dict[str, object] = json.loads(reply)
    return out


@pytest.mark.parametrize("protocol", ["h2c", "grpc"])
async def test_answers_after_the_configured_latency(protocol: str) -> None:
    with running_app(protocol, LATENCY="60ms") as port:
        async with H2cClient("127.0.0.1", port, grpc=protocol == "grpc") as client:
            samples = await client.run(streams=5, requests=15, duration_s=20)
    assert len(samples) == 15
    for s in samples:
        assert s.ok, s
        assert s.latency_s is not None and 0.06 <= s.latency_s < 2.0, s
        assert s.served_by == f"{protocol}-pod"
    if protocol == "grpc":
        assert {s.grpc_status for s in samples} == {0}


@pytest.mark.parametrize("protocol", ["http1", "h2c", "grpc"])
async def test_every_error_is_answered_at_once(protocol: str) -> None:
    with running_app(protocol, LATENCY="2s", ERROR_RATE="1") as port:
        if protocol == "http1":
            status, body, took = await _http1(port, "/")
            assert status == 503 and b"injected" in body and took < 1.0
            return
        if protocol == "grpc":
            async with GrpcClient(f"127.0.0.1:{port}") as rpc:
                sample = await rpc.call()
            assert sample.code == "UNAVAILABLE" and sample.served_by == "grpc-pod"
            assert sample.latency_s is not None and sample.latency_s < 1.0
        async with H2cClient("127.0.0.1", port, grpc=protocol == "grpc") as client:
            samples = await client.run(streams=4, requests=8, duration_s=10)
    assert len(samples) == 8
    for s in samples:
        assert not s.ok and s.latency_s is not None and s.latency_s < 1.0, s
        if protocol == "grpc":
            assert s.status == 200 and s.grpc_status == 14  # UNAVAILABLE
        else:
            assert s.status == 503


@pytest.mark.parametrize("protocol", ["h2c", "grpc"])
async def test_error_share_follows_error_rate_and_the_app_counts_agree(protocol: str) -> None:
    with running_app(protocol, LATENCY="1s", ERROR_RATE="0.3") as port:
        async with H2cClient("127.0.0.1", port, grpc=protocol == "grpc") as client:
            samples = await client.run(streams=100, requests=400, duration_s=30)
        if protocol == "grpc":
            counts = await _grpc_control(port, "")
        else:
            _, body, _ = await _http1(port, "/control")  # h2c mode serves HTTP/1.1 too
            counts = json.loads(body)
    errors = [s for s in samples if not s.ok]
    assert len(samples) == 400 and all(s.error is None for s in samples)
    assert 0.18 < len(errors) / len(samples) < 0.42
    # Errors do not wait the latency (1 s); successes do.
    assert all(s.latency_s is not None and s.latency_s < 0.5 for s in errors)
    assert all(s.latency_s is not None and s.latency_s >= 1.0 for s in samples if s.ok)
    assert counts["requests"] == 400 and counts["errors"] == len(errors)


async def test_grpc_health_and_control_methods() -> None:
    with running_app("grpc", LATENCY="10ms") as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)
        assert health == b"\x08\x01"  # HealthCheckResponse{status: SERVING}
        assert (await _grpc_control(port, "latency=300ms"))["latency"] == "300ms"
        async with GrpcClient(f"127.0.0.1:{port}") as rpc:
            sample = await rpc.call()
        assert sample.ok and sample.latency_s is not None and sample.latency_s >= 0.3
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _grpc_control(port, "mode=bogus")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_h2c_mode_serves_http1_probes_and_control() -> None:
    with running_app("h2c", LATENCY="10ms") as port:
        status, _, took = await _http1(port, "/healthz")
        assert status == 200 and took < 1.0
        status, body, _ = await _http1(port, "/control?latency=250ms", method="POST")
        assert status == 200 and json.loads(body)["latency"] == "250ms"
        async with H2cClient("127.0.0.1", port) as client:
            sample = await client.request()
        assert sample.ok and sample.latency_s is not None and sample.latency_s >= 0.25


async def test_http1_responses_echo_the_request_id_of_pipelined_requests() -> None:
    with running_app("http1", LATENCY="20ms") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: 3-1\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: 3-2\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await reader.read()
        writer.close()
    heads = [chunk for chunk in data.split(b"HTTP/1.1 ")[1:]]
    assert len(heads) == 3
    assert [h.count(b"X-Request-Id: 3-1") for h in heads] == [1, 0, 0]
    assert [h.count(b"X-Request-Id: 3-2") for h in heads] == [0, 1, 0]
    assert b"X-Request-Id" not in heads[2]


async def test_h2c_responses_echo_the_request_id_of_each_stream() -> None:
    import h2.config
    import h2.connection
    import h2.events

    with running_app("h2c", LATENCY="20ms") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for stream_id, name in ((1, b"a"), (3, b"b"), (5, None)):
            headers = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")]
            headers += [(b":authority", b"x")] + ([(b"x-request-id", name)] if name else [])
            conn.send_headers(stream_id, headers, end_stream=True)
        writer.write(conn.data_to_send())
        echoed: dict[int, bytes | None] = {}
        while len(echoed) < 3:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the app closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    echoed[event.stream_id] = dict(event.headers).get(b"x-request-id")
            writer.write(conn.data_to_send())
        writer.close()
    assert echoed == {1: b"a", 3: b"b", 5: None}
