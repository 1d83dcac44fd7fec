"""The accuracy benchmark's clients: each drives one test-app "pod" and returns the
client-side truth of every request it sent (`Truth`: latency in µs, and whether the
response was an error), taken where the agent takes its own measure (DESIGN §10).

- HTTP/1.1 (`drive_http1`): N keep-alive connections, one thread each, one request at a
  time per connection. Timed from the kernel's software timestamp of the request
  leaving the client socket to that of the first response segment arriving
  (SO_TIMESTAMPING), so a busy machine's delay in waking the client is not counted.
- h2c and gRPC (`drive_h2`): ONE connection carrying N concurrent streams
  (`aviator.testing.h2client`, gRPC in its wire format for `grpc=True`): per stream
  from the kernel's stamp of the send carrying its request HEADERS to that of the
  read carrying its first response HEADERS.
- grpcio (`drive_grpcio`): grpcio's own channel, N concurrent RPCs; its time includes
  grpcio's overhead in this process, so its figures are the real client's view.
- h2load (`drive_h2load`): nghttp2's load tool, one connection, N streams; it reports
  counts and status classes only (`Truth` latencies are nan).

Every driver is bounded by a request count and a time limit.
"""

from __future__ import annotations

import math
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from aviator.testing.grpcclient import GrpcClient
from aviator.testing.h2client import H2cClient
from aviator.testing.pool import parse_response_head
from aviator.testing.stamped import (
    CMSG_SPACE,
    SO_TIMESTAMPING,
    TIMESTAMPING_FLAGS,
    scm_timestamp,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Truth:
    """One request as the client saw it: latency (µs; nan when the tool does not say)
    and the application timing where there is one; `error`: a 5xx or a non-OK gRPC
    status."""

    latency_us: float
    error: bool
    app_us: float = math.nan


class Http1Client:
    """One keep-alive connection; each request timed by kernel stamps and by the app."""

    def __init__(self, ip: str, port: int) -> None:
        self.sock = socket.create_connection((ip, port), timeout=30)
        self.sock.settimeout(None)  # blocking: MSG_DONTWAIT then means "nothing queued"
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMPING_FLAGS)
        self.buf = bytearray()

    def request(self) -> Truth:
        t0_app = time.monotonic_ns()
        t0_wall = time.time_ns()
        self.sock.sendall(REQUEST)
        first_rx: int | None = None
        while b"\r\n\r\n" not in self.buf:
            first_rx = self._recv(first_rx)
        head_end = self.buf.index(b"\r\n\r\n") + 4
        status, length, _ = parse_response_head(bytes(self.buf[:head_end]))
        while len(self.buf) < head_end + length:
            first_rx = self._recv(first_rx)
        del self.buf[: head_end + length]
        t1_app = time.monotonic_ns()
        sent = self._sent_at(t0_wall)
        assert first_rx is not None
        return Truth((first_rx - sent) / 1000, status >= 500, (t1_app - t0_app) / 1000)

    def _recv(self, first_rx: int | None) -> int:
        data, ancdata, _, _ = self.sock.recvmsg(262144, CMSG_SPACE)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data
        if first_rx is not None:
            return first_rx
        stamp = scm_timestamp(ancdata)
        return stamp if stamp is not None else time.time_ns()

    def _sent_at(self, fallback: int) -> int:
        stamp = fallback
        while True:
            try:
                _, ancdata, _, _ = self.sock.recvmsg(
                    64, CMSG_SPACE, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return stamp
            found = scm_timestamp(ancdata)
            if found is not None:
                stamp = found

    def close(self) -> None:
        self.sock.close()


def drive_http1(
    ip: str, port: int, connections: int, requests: int, duration_s: float
) -> list[Truth]:
    """`connections` keep-alive connections (a thread each) share `requests`."""
    deadline = time.monotonic() + duration_s
    budget = [requests]
    lock = threading.Lock()
    out: list[list[Truth]] = [[] for _ in range(connections)]
    errors: list[BaseException] = []

    def take() -> bool:
        with lock:
            if budget[0] <= 0 or time.monotonic() >= deadline:
                return False
            budget[0] -= 1
            return True

    def worker(i: int) -> None:
        try:
            client = Http1Client(ip, port)
            try:
                while take():
                    out[i].append(client.request())
            finally:
                client.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 60)
    if errors:
        raise errors[0]
    return [t for part in out for t in part]


async def drive_h2(
    ip: str, port: int, streams: int, requests: int, duration_s: float, *, grpc: bool
) -> list[Truth]:
    """One h2c connection, `streams` concurrent streams (gRPC framing if `grpc`)."""
    async with H2cClient(ip, port, grpc=grpc, timeout_s=duration_s + 30) as client:
        samples = await client.run(streams, requests, duration_s)
    failed = [s for s in samples if s.latency_s is None]
    if failed:
        raise RuntimeError(f"{len(failed)} streams got no response: {failed[0].error}")
    return [Truth((s.latency_s or 0.0) * 1e6, not s.ok) for s in samples]


async def drive_grpcio(
    ip: str, port: int, streams: int, requests: int, duration_s: float
) -> list[Truth]:
    """grpcio's channel, `streams` concurrent RPCs."""
    async with GrpcClient(f"{ip}:{port}", timeout_s=duration_s + 30) as client:
        samples = await client.run(streams, requests, duration_s)
    failed = [s for s in samples if s.latency_s is None]
    if failed:
        raise RuntimeError(f"{len(failed)} RPCs got no response headers: {failed[0].code}")
    return [Truth((s.latency_s or 0.0) * 1e6, not s.ok) for s in samples]


def h2load_available() -> bool:
    return shutil.which("h2load") is not None


def drive_h2load(ip: str, port: int, streams: int, requests: int, duration_s: float) -> list[Truth]:
    """h2load -c 1 -m streams -n requests; its 2xx and 5xx counts (latencies nan)."""
    result = subprocess.run(
        ["h2load", "-n", str(requests), "-c", "1", "-m", str(streams), f"http://{ip}:{port}/"],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=True,
    )
    codes = re.search(r"status codes: (\d+) 2xx, \d+ 3xx, \d+ 4xx, (\d+) 5xx", result.stdout)
    if codes is None:
        raise RuntimeError(f"h2load said: {result.stdout[-400:]}")
    ok, failed = int(codes.group(1)), int(codes.group(2))
    return [Truth(math.nan, False)] * ok + [Truth(math.nan, True)] * failed
