"""The kubelet's probes are told apart from traffic (bpf/latency.h, ROLE_PROBE): a
request from a node address to a probe's port and path is a sample of the endpoint's
`probe` role, never of its `server` histogram; anything else is traffic. The agent's
own requests (keep-warm probes) are traffic, counted in `keepwarm`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from bpf_snapshots import EMPTY, delta, traffic_and_probes
from conftest import TEST_BOUND_S

from aviator.agent.bpf import BpfLatencySource, EndpointKey

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

POD = "127.0.23.1"
NODE = "127.0.23.100"  # one of the node's addresses (the kubelet's source)
CLIENT = "127.0.23.101"  # a client elsewhere


class RecordingServer:
    """Answers each HTTP/1.1 request (ended by a blank line) with a small 200, and
    records every chunk each read returned (`reads`, `got` set on each). `splice`:
    take the bytes with splice(2) through a pipe, a path with no hooked syscall."""

    def __init__(self, host: str, *, splice: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.splice = splice
        self.reads: list[bytes] = []
        self.got = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _recv(self, conn: socket.socket, pipe: tuple[int, int]) -> bytes:
        if not self.splice:
            return conn.recv(65536)
        n = os.splice(conn.fileno(), pipe[1], 65536)
        return os.read(pipe[0], n) if n else b""

    def _serve(self) -> None:
        pipe = os.pipe()
        try:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                with conn:
                    buf = b""
                    while True:
                        chunk = self._recv(conn, pipe)
                        if not chunk:
                            break
                        self.reads.append(chunk)
                        self.got.release()
                        buf += chunk
                        while b"\r\n\r\n" in buf:
                            _, buf = buf.split(b"\r\n\r\n", 1)
                            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        finally:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def probed(latency_source: BpfLatencySource) -> Iterator[RecordingServer]:
    server = RecordingServer(POD)
    latency_source.set_probes({(POD, server.port): ["/healthz", "/livez?verbose=1"]}, [NODE])
    try:
        yield server
    finally:
        latency_source.set_probes({}, [])
        server.close()


def connect(server: RecordingServer, source: str) -> socket.socket:
    s = socket.create_connection((server.host, server.port), source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request(s: socket.socket, path: str) -> None:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: pod\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")


def counts(
    source: BpfLatencySource, before: dict, server: RecordingServer, want: tuple[int, int]
) -> tuple[int, int]:
    """(traffic, probes) on the server's endpoint since `before`, once they reach `want`."""
    return traffic_and_probes(source, before, server.host, server.port, want)


def test_probe_path_from_the_node_is_a_probe_and_from_a_client_is_traffic(
    latency_source: BpfLatencySource, probed: RecordingServer
) -> None:
    before = latency_source.read()
    with connect(probed, NODE) as s:
        request(s, "/healthz")
    assert counts(latency_source, before, probed, (0, 1)) == (0, 1)
    with connect(probed, CLIENT) as s:
        request(s, "/healthz")
    assert counts(latency_source, before, probed, (1, 1)) == (1, 1)
    # The node's other requests (a keep-warm probe, a Service proxy's SNAT) are traffic.
    with connect(probed, NODE) as s:
        request(s, "/")
        request(s, "/healthzz")
        request(s, "/livez")  # the probe's path is "/livez?verbose=1": the query counts
    assert counts(latency_source, before, probed, (4, 1)) == (4, 1)
    after = latency_source.read()
    probe = delta(before, after, EndpointKey(probed.host, probed.port, "probe"))
    assert probe.statuses == 1  # the probe's response status is the probe's
    assert delta(before, after, EndpointKey(probed.host, probed.port, "server")).statuses == 4


def test_each_request_on_a_kept_alive_connection_is_classified_on_its_own(
    latency_source: BpfLatencySource, probed: RecordingServer
) -> None:
    before = latency_source.read()
    with connect(probed, NODE) as s:
        for path in ("/healthz", "/", "/livez?verbose=1", "/work", "/healthz"):
            request(s, path)
    assert counts(latency_source, before, probed, (2, 3)) == (2, 3)


def test_a_target_split_over_two_writes_and_reads_is_read_whole(
    latency_source: BpfLatencySource, probed: RecordingServer
) -> None:
    before = latency_source.read()
    for split, path in (("GET /hea", "/healthz"), ("GE", "/healthz"), ("GET /hea", "/heal")):
        with connect(probed, NODE) as s:
            line = f"GET {path} HTTP/1.1\r\nHost: pod\r\n\r\n".encode()
            head, tail = line[: len(split)], line[len(split) :]
            while probed.got.acquire(blocking=False):
                pass  # the reads of earlier requests
            reads = len(probed.reads)
            s.sendall(head)
            # The server has read the first part before the second is sent: two reads.
            assert probed.got.acquire(timeout=5)
            assert probed.reads[reads] == head
            s.sendall(tail)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert counts(latency_source, before, probed, (1, 2)) == (1, 2)


def test_a_target_longer_than_the_program_reads_is_traffic(
    latency_source: BpfLatencySource, probed: RecordingServer
) -> None:
    long_path = "/healthz" + "x" * 200
    latency_source.set_probes({(POD, probed.port): ["/healthz", long_path]}, [NODE])
    before = latency_source.read()
    with connect(probed, NODE) as s:
        request(s, long_path)
    assert counts(latency_source, before, probed, (1, 0)) == (1, 0)


def test_where_the_target_is_not_read_the_node_address_and_port_decide(
    latency_source: BpfLatencySource,
) -> None:
    server = RecordingServer(POD, splice=True)  # bytes taken by splice(2): not seen
    latency_source.set_probes({(POD, server.port): ["/healthz"]}, [NODE])
    try:
        before = latency_source.read()
        stats_before = latency_source.stats()["probes_by_address"]
        with connect(server, NODE) as s:
            request(s, "/anything")
        with connect(server, CLIENT) as s:
            request(s, "/healthz")
        assert counts(latency_source, before, server, (1, 1)) == (1, 1)
        assert latency_source.stats()["probes_by_address"] - stats_before >= 1
    finally:
        latency_source.set_probes({}, [])
        server.close()


def test_without_probes_listed_the_node_is_a_client_like_any_other(
    latency_source: BpfLatencySource,
) -> None:
    server = RecordingServer(POD)
    try:
        before = latency_source.read()
        with connect(server, NODE) as s:
            request(s, "/healthz")
        assert counts(latency_source, before, server, (1, 0)) == (1, 0)
    finally:
        server.close()


_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), source_address=(sys.argv[3], 0))
for _ in range(int(sys.argv[4])):
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: pod\\r\\n\\r\\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
s.close()
"""


def test_the_loading_processs_requests_are_keep_warm_probes(
    latency_source: BpfLatencySource, probed: RecordingServer
) -> None:
    # The program's loader (the agent; here this test process) sends keep-warm probes:
    # samples of the real path, counted in `keepwarm`. Another process's are not.
    traffic = EndpointKey(probed.host, probed.port, "server")
    before = latency_source.read()
    with connect(probed, NODE) as s:
        for _ in range(3):
            request(s, "/")
        request(s, "/healthz")  # a probe's path from the loader is still a probe
    argv = [sys.executable, "-c", _CLIENT, probed.host, str(probed.port), NODE, "2"]
    subprocess.run(argv, check=True, timeout=30)
    assert counts(latency_source, before, probed, (5, 1)) == (5, 1)
    after = latency_source.read()
    assert after[traffic].keepwarm - before.get(traffic, EMPTY).keepwarm == 3
