"""What one agent report interval and one urgent look cost, before and after reading
the BPF maps by change (aviator/agent/bpf/tracked.py).

The real program is loaded; `idle` pod addresses (127.0.100.0 onwards; quick: fewer)
each get one request, so the endpoints map holds two idle endpoints per address (the
server's socket and the client's view); then, round after round, two addresses get a
request (four endpoints change) and both reads are timed:

- report interval, before: every endpoint decoded (`read_all`, what each tick did);
- report interval, after: `read()`, which decodes the marked endpoints only (plus the
  open-request ages, as a tick needs);
- urgent look, before: the same full read (the look read every counter);
- urgent look, after: `open_ages` of ten pod addresses (the socket map only).

Rows: the median of each over the rounds, ratios after / before, and the endpoints the
read by change decoded.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time

from bench.common import row

NAME = "agent_read"
Row = dict[str, object]
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _ip(i: int) -> str:
    return f"127.0.{100 + i // 250}.{1 + i % 250}"


class _Server:
    """One wildcard HTTP/1.1 server: a thread per connection, one answer per request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(1024)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    conn.sendall(RESPONSE)

    def close(self) -> None:
        self.sock.close()


def _hit(ips: list[str], port: int) -> None:
    for ip in ips:
        with socket.create_connection((ip, port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            got = b""
            while len(got) < len(RESPONSE):
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def run(quick: bool) -> list[Row]:
    from aviator.agent.bpf import BpfLatencySource, BpfUnavailable

    idle, rounds = (200, 5) if quick else (1_000, 15)
    try:
        source = BpfLatencySource.load(max_sockets=16384, max_endpoints=8192)
    except BpfUnavailable as exc:
        return [row(NAME, "skipped", 0.0, "", note=f"BPF unavailable: {exc.reason}")]
    server = _Server()
    ips = [_ip(i) for i in range(idle)]
    try:
        _hit(ips, server.port)
        source.read()  # the first read is a whole one (then: by change)
        source.read()
        before, after, look_before, look_after, decoded = [], [], [], [], []
        watched = set(ips[:10])
        for r in range(rounds):
            busy = ips[2 * r % idle : 2 * r % idle + 2]
            _hit(busy, server.port)
            before.append(_timed(source.read_all))
            look_before.append(before[-1])
            _hit(busy, server.port)
            after.append(_timed(source.read))
            decoded.append(source.tracked.last.decoded)
            look_after.append(_timed(lambda: source.open_ages(watched)))
        entries = len(source.tracked)
        source.prune(lambda ip: not ip.startswith("127.0.10"), 0.0)
    finally:
        server.close()
        source.close()

    def ms(values: list[float]) -> float:
        return 1000 * statistics.median(values)

    note = f"{entries} endpoints in the map, 4 changed per interval"
    return [
        row(NAME, "report interval read, before (all decoded)", ms(before), "ms", note=note),
        row(
            NAME,
            "report interval read, after (by change)",
            ms(after),
            "ms",
            ratio=ms(after) / ms(before),
            note=f"{min(decoded)}..{max(decoded)} endpoints decoded",
        ),
        row(NAME, "urgent look, before (full read)", ms(look_before), "ms"),
        row(
            NAME,
            "urgent look, after (open-request ages)",
            ms(look_after),
            "ms",
            ratio=ms(look_after) / ms(look_before),
        ),
    ]
