"""HTTP/2 connections racing the program's own hooks on two CPUs, as short-lived clients
make them: the request's HEADERS segment arrives while the server reads the preface
(the connection turns HTTP/2 on one CPU as the segment is seen on the other), and the
client closes as soon as it read its answer (its FIN may arrive before the server's
send of that answer is parsed). Every connection is one answered stream: no request of
the connection level left open (in flight, then aborted at the close), no answered
stream aborted.

The races are timing-dependent, so this test sends many connections (bounded in count
and time); it fails on the program without the guards (bpf/latency.bpf.c:
start_request; bpf/h2_streams.h: h2_peer_closed) in most runs, never with them."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bpf_snapshots import delta
from conftest import TEST_BOUND_S
from h2_wire import PREFACE, STATUS_200, headers, read_exactly, settings

from aviator.agent.bpf import BpfLatencySource, EndpointKey

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

HOST = "127.0.52.17"
CONNECTIONS = 4000
BOUND_S = 20.0  # stop sending early on a slow machine (what was sent is still checked)

# The server, in a process of its own (its reads and sends on the other CPU): reads each
# connection's preface, SETTINGS and request, answers in one send, waits for the close.
SERVER = """
import socket, sys
from h2_wire import PREFACE, STATUS_200, headers, settings
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
request = len(PREFACE + settings() + headers(1))
answer = settings() + headers(1, STATUS_200)
while True:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = 0
    while got < request:
        part = conn.recv(65536)
        if not part:
            break
        got += len(part)
    conn.sendall(answer)
    conn.recv(1)
    conn.close()
"""


def test_short_connections_racing_the_hooks_are_one_answered_stream_each(
    latency_source: BpfLatencySource,
) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, HOST],
        stdout=subprocess.PIPE,
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        key = EndpointKey(HOST, port, "server")
        before = latency_source.read()
        opening = PREFACE + settings()
        answer = len(settings() + headers(1, STATUS_200))
        rng = random.Random(7)
        sent = 0
        deadline = time.monotonic() + BOUND_S
        while sent < CONNECTIONS and time.monotonic() < deadline:
            with socket.create_connection((HOST, port), timeout=10) as client:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client.sendall(opening)
                # A gap of 0 to 100 µs: about the time the server takes to wake up and
                # read the preface.
                gap = time.perf_counter() + rng.random() * 100e-6
                while time.perf_counter() < gap:
                    pass
                client.sendall(headers(1))
                read_exactly(client, answer)
            sent += 1
        # Every connection's end, after which nothing more is recorded for it: the
        # server's sockets closed (the server may still hold the last one) and gone
        # from the program's map.
        server.kill()
        server.wait()
        deadline = time.monotonic() + 10.0
        while any(s.local == (HOST, port) for s in latency_source.sockets()):
            assert time.monotonic() < deadline, "the server's sockets stayed tracked"
            time.sleep(0.01)  # the map raises no event to await
        after = latency_source.read()
    finally:
        server.kill()
        server.wait()
    d = delta(before, after, key)
    assert sent >= CONNECTIONS // 10, sent
    assert (d.count, d.aborted, d.rif, d.statuses) == (sent, 0, 0, sent)
