"""Shared pieces of the protocol tests: the test app as a process on 127.0.0.1, and a
TCP relay that counts the connections a client opens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

from aviator.box.files import TESTAPP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_app(protocol: str, **env: str) -> Iterator[int]:
    """The test app in `protocol` mode with `env` (LATENCY, ERROR_RATE, ...); its port."""
    port = free_port()
    full = {
        "PATH": os.environ["PATH"],
        "PROTOCOL": protocol,
        "PORT": str(port),
        "LISTEN_ADDR": "127.0.0.1",
        "POD_NAME": f"{protocol}-pod",
        "DRAIN": "0s",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-u", str(TESTAPP)], env=full, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # the app says so once it listens
        assert b"listening" in line, line
        yield port
    finally:
        proc.kill()
        proc.wait()


class Relay:
    """127.0.0.1:<port> → target, byte for byte; `accepted` counts client connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
