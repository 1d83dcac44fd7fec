"""The test app's HTTP/2 server without TLS (h2c, prior knowledge), on the `h2` library.

One task reads the connection and feeds the sans-IO state machine; each request
(stream) is answered by its own task, so streams are independent: a slow one does not
hold back the others on the same connection. A request is answered when its HEADERS
arrive (a body, if any, is read and discarded): `:status` 200 after the latency, or
503 at once, with the same JSON body and `x-served-by` header as HTTP/1.1. Response
HEADERS and DATA leave in one write. A stream the client resets is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from testapp_core import App

MAX_STREAMS = 1000


class _H2Server:
    def __init__(self, app: App, writer: asyncio.StreamWriter) -> None:
        self.app = app
        self.writer = writer
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, asyncio.Task[None]] = {}
        self.window = asyncio.Event()  # set when the peer grants more send window

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def receive(self, data: bytes) -> bool:
        """Feed bytes; False when the connection is over."""
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                task = asyncio.get_running_loop().create_task(
                    self.respond(event.stream_id, dict(event.headers or []))
                )
                self.streams[event.stream_id] = task
                task.add_done_callback(lambda _, sid=event.stream_id: self.streams.pop(sid, None))
            elif isinstance(event, DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamReset):
                task = self.streams.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(event, WindowUpdated):
                self.window.set()
            elif isinstance(event, ConnectionTerminated):
                self.flush()
                return False
        self.flush()
        return True

    async def respond(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        method = headers.get(b":method", b"GET").decode("latin-1")
        path = headers.get(b":path", b"/").decode("latin-1")
        status, body = await self.app.handle(method, path)
        payload = json.dumps(body).encode()
        try:
            while self.conn.local_flow_control_window(stream_id) < len(payload):
                self.window.clear()
                await self.window.wait()
            request_id = headers.get(b"x-request-id")
            echo = [] if request_id is None else [(b"x-request-id", request_id)]
            self.conn.send_headers(
                stream_id,
                [
                    (b":status", str(status).encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-served-by", self.app.name.encode()),
                    *echo,
                ],
            )
            self.conn.send_data(stream_id, payload, end_stream=True)
        except H2Error:
            return  # the stream or the connection ended meanwhile
        self.flush()

    def close(self) -> None:
        for task in list(self.streams.values()):
            task.cancel()


async def serve_h2_connection(
    app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
) -> None:
    """Serve one h2c connection whose first line (`first`, of the preface) was read."""
    server = _H2Server(app, writer)
    server.conn.initiate_connection()
    server.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
    server.flush()
    data = first
    try:
        while data:
            if not server.receive(data):
                break
            data = await reader.read(65536)
    except H2Error:
        server.flush()  # the GOAWAY h2 queued for the peer's protocol error
    except ConnectionError:
        pass
    finally:
        server.close()
        with contextlib.suppress(Exception):
            writer.close()
