"""The handoff-wrk bench's wrk client: its per-request lines parse into samples, and run
against a local server, a connection ended with a request in flight is exactly one
failed request while an idle connection the server closed (a hand-off) is none."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from bench.handoff_wrk_bench import CONNECTIONS, _Wrk, parse_thread_log, summarize


def test_thread_log_lines_parse_into_samples() -> None:
    samples = parse_thread_log(
        "ok 10.5 0.012 200 fast-1\nlost 11.0\nok 11.2 0.5 503 slow-2\nok 12.0 0.01 200 -\ngarbage\n"
    )
    assert [(s.at, s.latency_s, s.ok, s.served_by, s.error) for s in samples] == [
        (10.5, 0.012, True, "fast-1", None),
        (11.0, None, False, None, "connection ended"),
        (11.2, 0.5, False, "slow-2", "HTTP 503"),
        (12.0, 0.01, True, None, None),
    ]


def test_summary_reads_wrk_error_counts() -> None:
    out = (
        "  Socket errors: connect 0, read 7, write 1, timeout 2\n"
        "  Non-2xx or 3xx responses: 3\nRequests/sec:     79.9\n"
    )
    assert summarize(out) == ("socket errors connect 0, read 7, write 1, timeout 2, 3 non-2xx/3xx")
    assert summarize("Requests/sec:     79.9\n") == "no socket errors"


async def test_wrk_counts_requests_cut_in_flight_and_not_idle_closes() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is missing: `make setup` installs it")
    connections = 0
    cut = answered = idle_closed = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The first connections answer twice then close while idle, the next ones
        # take a request and close without answering, the rest answer everything.
        nonlocal connections, cut, answered, idle_closed
        ordinal = connections
        connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                if CONNECTIONS <= ordinal < 2 * CONNECTIONS:
                    cut += 1
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: pod-a\r\n\r\nok"
                )
                await writer.drain()
                answered += 1
                served += 1
                if ordinal < CONNECTIONS and served == 2:
                    idle_closed += 1
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wrk = _Wrk(("127.0.0.1", port), None)  # no network namespace: the host's loopback
    try:
        started = time.monotonic()
        samples = await wrk.run(4 * CONNECTIONS, 3, 1)
    finally:
        await wrk.close()
        server.close()
    failed = [s for s in samples if not s.ok]
    ok = [s for s in samples if s.ok]
    assert cut > 0 and idle_closed > 0
    assert len(failed) == cut, (failed, cut, idle_closed)
    assert all(s.error == "connection ended" for s in failed)
    # wrk may stop with an answer on the way: at most one per connection unparsed.
    assert len(ok) <= answered <= len(ok) + CONNECTIONS
    assert all(s.served_by == "pod-a" and s.latency_s is not None for s in ok)
    assert all(started <= s.at <= time.monotonic() for s in samples)
    assert "read" in wrk.redials(started)
