"""Real HTTP/2 and gRPC servers for the real-kernel tests: the `h2` library's protocol
engine on plain sockets (one thread per connection, answers after a delay from a timer
thread, so streams overlap), and a grpcio server with one generic unary method."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import h2.config
import h2.connection
import h2.events

GRPC_METHOD = "/aviator.test.Echo/Call"


@dataclass
class H2Server:
    """h2c (prior knowledge) server on (host, random port) answering every request with
    `status(stream id)` (default 200) after `delay` seconds."""

    host: str
    delay: float = 0.002
    status: Callable[[int], int] = lambda stream: 200
    port: int = 0
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> H2Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(64)
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._spawn(self._accept)
        return self

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        lock = threading.Lock()
        h2c.initiate_connection()
        conn.sendall(h2c.data_to_send())

        def answer(stream: int) -> None:
            with lock, contextlib.suppress(Exception):
                h2c.send_headers(
                    stream, [(":status", str(self.status(stream))), ("content-length", "2")]
                )
                h2c.send_data(stream, b"ok", end_stream=True)
                conn.sendall(h2c.data_to_send())

        try:
            while data := conn.recv(65536):
                with lock:
                    events = h2c.receive_data(data)
                    out = h2c.data_to_send()
                    if out:
                        conn.sendall(out)
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        threading.Timer(self.delay, answer, (event.stream_id,)).start()
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()


@contextlib.contextmanager
def grpc_serving(
    host: str,
    service: str,
    methods: dict[str, grpc.RpcMethodHandler | Callable[[bytes, grpc.ServicerContext], bytes]],
    *,
    workers: int,
    on_stop: Callable[[], None] = lambda: None,
) -> Iterator[int]:
    """A grpcio server on (host, random port) serving `service`'s `methods` (a plain
    function is a unary method on raw bytes); yields the port. `on_stop` runs before
    the server stops (to release calls a test holds)."""
    handlers = {
        name: m if isinstance(m, grpc.RpcMethodHandler) else grpc.unary_unary_rpc_method_handler(m)
        for name, m in methods.items()
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    try:
        yield port
    finally:
        on_stop()
        server.stop(grace=None)


@contextlib.contextmanager
def grpc_server(host: str, fail: Callable[[bytes], bool]) -> Iterator[int]:
    """A grpcio server on (host, random port) whose one method echoes its request, or
    fails with INTERNAL when `fail(request)`; yields the port."""

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        if fail(request):
            context.abort(grpc.StatusCode.INTERNAL, "asked to fail")
        return request

    with grpc_serving(host, "aviator.test.Echo", {"Call": call}, workers=4) as port:
        yield port
