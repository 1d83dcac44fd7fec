"""The kubelet's gRPC probes are told apart from traffic (bpf/latency.h, ROLE_PROBE): on
an endpoint marked as gRPC-probed, every HTTP/2 stream of a connection from a node
address that is not the agent's own is a sample of the endpoint's `probe` role (its
:path is not read: the address and the port decide, CNT_PROBES_BY_ADDRESS), never of its
`server` histogram. The same RPC from a client address, on a port not gRPC-probed, or
on the agent's own connection (keep-warm) is traffic.

The probes come from another process: this test process loaded the program, so its
own connections are the "agent's" (keep-warm) ones.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from bpf_snapshots import EMPTY, delta, traffic_and_probes
from conftest import TEST_BOUND_S
from h2_wire import (
    CONTENT_TYPE_GRPC,
    PREFACE,
    STATUS_200,
    data,
    grpc_trailers,
    headers,
    settings,
)

from aviator.agent.bpf import BpfLatencySource, EndpointKey

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

POD = "127.0.24.1"
NODE = "127.0.24.100"  # one of the node's addresses (the kubelet's source)
CLIENT = "127.0.24.101"  # a client elsewhere

HEALTH = b"/grpc.health.v1.Health/Check"
# The kubelet's gRPC probe as grpc-go encodes it: :method POST, :scheme http (static
# 3, 6), :path as a literal with incremental indexing (name: static 4), content-type.
HEALTH_BLOCK = b"\x83\x86\x44" + bytes([len(HEALTH)]) + HEALTH + CONTENT_TYPE_GRPC
REQUEST = (
    PREFACE
    + settings()
    + headers(1, HEALTH_BLOCK, end_stream=False)
    + data(1, b"\x00\x00\x00\x00\x00")  # an empty HealthCheckRequest
)
# Where a split cuts the request: inside the :path literal of the HEADERS block.
SPLIT_AT = len(PREFACE + settings()) + 9 + 3 + 10
RESPONSE = (
    settings()
    + headers(1, STATUS_200 + CONTENT_TYPE_GRPC, end_stream=False)
    + data(1, b"\x00\x00\x00\x00\x02\x08\x01", end_stream=False)  # SERVING
    + grpc_trailers(1, 0)
)


class HealthServer:
    """Answers one gRPC health check per connection (it reads the whole request, then
    answers and closes, as the kubelet's probe connections go), recording every read
    (`reads`; `got` released on each)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.reads: list[bytes] = []
        self.got = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while len(buf) < len(REQUEST):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    self.reads.append(chunk)
                    self.got.release()
                    buf += chunk
                if buf == REQUEST:
                    conn.sendall(RESPONSE)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


# Another process (not the program's loader): connects from argv[3], sends argv[4]
# bytes of the request, waits for a line on stdin when more follow, sends the rest,
# reads the answer to its end.
_PROBE = """
import socket, sys
request = bytes.fromhex(sys.argv[4])
split = int(sys.argv[5])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), source_address=(sys.argv[3], 0))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(request[:split])
if split < len(request):
    sys.stdin.readline()
    s.sendall(request[split:])
got = b""
while part := s.recv(65536):
    got += part
assert got == bytes.fromhex(sys.argv[6]), got
s.close()
"""


def probe(server: HealthServer, source: str, split: int = len(REQUEST)) -> None:
    """One gRPC health check on a new connection from `source`, by another process;
    with `split`, the server has read the request's first `split` bytes before the
    rest is sent."""
    argv = [sys.executable, "-c", _PROBE, server.host, str(server.port), source]
    argv += [REQUEST.hex(), str(split), RESPONSE.hex()]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None
        if split < len(REQUEST):
            while server.got.acquire(blocking=False):
                pass  # earlier connections' reads
            reads = len(server.reads)
            assert server.got.acquire(timeout=10)
            assert server.reads[reads] == REQUEST[:split]  # the first read ends there
            child.stdin.write("go\n")
            child.stdin.flush()
        assert child.wait(timeout=30) == 0


@pytest.fixture
def grpc_probed(latency_source: BpfLatencySource) -> Iterator[HealthServer]:
    server = HealthServer(POD)
    latency_source.set_probes({}, [NODE], [(POD, server.port)])
    try:
        yield server
    finally:
        latency_source.set_probes({}, [])
        server.close()


def counts(
    source: BpfLatencySource, before: dict, server: HealthServer, want: tuple[int, int]
) -> tuple[int, int]:
    """(traffic, probes) on the server's endpoint since `before`, once they reach `want`."""
    return traffic_and_probes(source, before, server.host, server.port, want)


def test_a_grpc_health_probe_from_the_node_is_a_probe_and_from_a_client_is_traffic(
    latency_source: BpfLatencySource, grpc_probed: HealthServer
) -> None:
    before = latency_source.read()
    by_address = latency_source.stats()["probes_by_address"]
    probe(grpc_probed, NODE)
    assert counts(latency_source, before, grpc_probed, (0, 1)) == (0, 1)
    assert latency_source.stats()["probes_by_address"] - by_address >= 1
    probe(grpc_probed, CLIENT)
    assert counts(latency_source, before, grpc_probed, (1, 1)) == (1, 1)
    after = latency_source.read()
    probes = delta(before, after, EndpointKey(grpc_probed.host, grpc_probed.port, "probe"))
    assert probes.statuses == 1  # its grpc-status is the probe's
    assert probes.rif == 0  # in flight on the probes' endpoint, and no longer
    traffic = delta(before, after, EndpointKey(grpc_probed.host, grpc_probed.port, "server"))
    assert (traffic.statuses, traffic.rif) == (1, 0)


def test_a_grpc_probe_whose_headers_span_two_reads_is_a_probe(
    latency_source: BpfLatencySource, grpc_probed: HealthServer
) -> None:
    # The :path is not read: the connection (node address, gRPC-probed port) decides,
    # whatever the reads cut.
    before = latency_source.read()
    probe(grpc_probed, NODE, split=SPLIT_AT)
    probe(grpc_probed, CLIENT, split=SPLIT_AT)
    assert counts(latency_source, before, grpc_probed, (1, 1)) == (1, 1)


def test_http2_from_the_node_to_a_port_without_grpc_probes_is_traffic(
    latency_source: BpfLatencySource,
) -> None:
    server = HealthServer(POD)
    latency_source.set_probes({(POD, server.port): ["/healthz"]}, [NODE])  # HTTP only
    try:
        before = latency_source.read()
        probe(server, NODE)
        assert counts(latency_source, before, server, (1, 0)) == (1, 0)
    finally:
        latency_source.set_probes({}, [])
        server.close()


def test_the_agents_own_grpc_connection_from_the_node_is_keep_warm_traffic(
    latency_source: BpfLatencySource, grpc_probed: HealthServer
) -> None:
    # This process loaded the program: its connection is the agent's (keep-warm).
    traffic = EndpointKey(grpc_probed.host, grpc_probed.port, "server")
    before = latency_source.read()
    with socket.create_connection(
        (grpc_probed.host, grpc_probed.port), source_address=(NODE, 0)
    ) as s:
        s.sendall(REQUEST)
        got = b""
        while part := s.recv(65536):
            got += part
    assert got == RESPONSE
    assert counts(latency_source, before, grpc_probed, (1, 0)) == (1, 0)
    after = latency_source.read()
    assert after[traffic].keepwarm - before.get(traffic, EMPTY).keepwarm == 1
