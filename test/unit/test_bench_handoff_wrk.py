"""The handoff-wrk bench's wrk client: its per-request lines pair responses with
requests by name, and run against a local server, every request a connection ended
under is a failed request while an idle connection the server closed (a hand-off)
costs none."""

from __future__ import annotations

import asyncio
import re
import shutil
import time

import pytest

from bench.handoff_bench import Bench, Load, Outcome, Timed, _rows
from bench.handoff_wrk_bench import CONNECTIONS, _Wrk, parse_thread_log, summarize


def test_thread_log_lines_pair_responses_with_requests_by_name() -> None:
    samples = parse_thread_log(
        "sent 0-1 10.0\ndone 0-1 10.012 200 fast-1\n"
        # two requests on one connection (a re-dial while a delay was pending), answered
        # in order, and one whose connection ended under it
        "sent 0-2 11.0\nsent 0-3 11.001\ndone 0-2 11.5 503 slow-2\ndone 0-3 11.6 200 -\n"
        "sent 0-4 12.0\nsent 0-5 12.1\ndone 0-5 12.2 200 fast-1\ngarbage\n"
        "sent 0-6 13.0\n"  # in flight when wrk stopped: no sample
    )
    got = {
        name: (
            s.at,
            None if s.latency_s is None else round(s.latency_s, 6),
            s.ok,
            s.served_by,
            s.error,
            s.pipelined,
        )
        for name, s in samples.items()
    }
    assert got == {
        "0-1": (10.0, 0.012, True, "fast-1", None, False),
        "0-2": (11.0, 0.5, False, "slow-2", "HTTP 503", False),
        "0-3": (11.001, 0.599, True, None, None, True),
        "0-4": (12.0, None, False, None, "connection ended", False),
        # 0-4 never got its answer: 0-5 went on the connection re-dialled after it ended
        "0-5": (12.1, 0.1, True, "fast-1", None, False),
    }
    assert list(samples) == ["0-1", "0-2", "0-3", "0-4", "0-5"]


def test_a_pipelined_request_cut_with_its_connection_is_told_apart() -> None:
    samples = parse_thread_log(
        # a re-dial writes two requests; the first is answered, the connection then
        # ends under the second (a hand-off sees the two as one request)
        "sent 0-1 10.0\nsent 0-2 10.001\ndone 0-1 10.5 200 slow-1\n"
        "sent 0-3 11.0\ndone 0-3 11.01 200 fast-1\n"
    )
    assert (samples["0-2"].ok, samples["0-2"].pipelined) == (False, True)
    assert not samples["0-3"].pipelined


def test_a_response_naming_no_request_is_an_error() -> None:
    with pytest.raises(ValueError, match="X-Request-Id"):
        parse_thread_log("sent 0-1 10.0\ndone - 10.1 200 pod-a\n")


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
    answered: set[str] = set()
    cut: set[str] = set()  # requests read by a connection that then closed unanswered
    idle_closed = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The first connections answer twice then close while idle, the next ones
        # take a request and close without answering, the rest answer everything.
        nonlocal connections, idle_closed
        ordinal = connections
        connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                name = re.search(rb"X-Request-Id: (\S+)", head)
                assert name is not None, head
                if CONNECTIONS <= ordinal < 2 * CONNECTIONS:
                    cut.add(name.group(1).decode())
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: pod-a\r\n"
                    b"X-Request-Id: " + name.group(1) + b"\r\n\r\nok"
                )
                await writer.drain()
                answered.add(name.group(1).decode())
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
        await wrk.run(4 * CONNECTIONS, 3, 1)
    finally:
        await wrk.close()
        server.close()
    samples = {name: s for thread in wrk.threads for name, s in thread.items()}
    failed = {name for name, s in samples.items() if not s.ok}
    ok = {name for name, s in samples.items() if s.ok}
    assert cut and idle_closed > 0
    # Every request a connection took and closed on is failed; no answered one is, so
    # an idle connection the server closed costs nothing.
    assert cut <= failed, (cut, failed)
    assert not failed & answered, failed & answered
    assert all(samples[name].error == "connection ended" for name in failed)
    # wrk may stop with answers on the way: at most two per connection unparsed.
    assert ok <= answered and len(answered - ok) <= 2 * CONNECTIONS
    assert all(samples[name].served_by == "pod-a" for name in ok)
    assert all(started <= s.at <= time.monotonic() for s in samples.values())
    assert "read" in wrk.redials(started)


def test_the_failed_row_counts_a_cut_pipelined_request_in_its_note_only() -> None:
    samples = [
        Timed(1.0, 0.01, True, "fast-1"),
        Timed(2.0, None, False, None, "connection ended", pipelined=True),
        Timed(3.0, None, False, None, "connection ended"),
    ]
    outcome = Outcome(samples, 0.0, 0.0, 1.0, "", "", "")
    bench = Bench("handoff-wrk", "ns", "http1", "wrk", "requests")
    rows = _rows(
        bench, [Timed(1.0, 0.01, True, "fast-1")], {"(b) hand-off on": outcome}, Load(1, 1, 1)
    )
    (failed,) = [r for r in rows if r["metric"] == "(b) hand-off on: failed requests"]
    assert failed["value"] == 1.0  # the request that was not pipelined
    assert "connection ended at +3.0 s" in failed["note"]
    assert "and 1 pipelined behind another request" in failed["note"]
