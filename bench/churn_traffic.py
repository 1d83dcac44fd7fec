"""The churn benchmark's pods and their clients, run inside the network namespace the
benchmark creates (`python -m bench.churn_traffic`): every pod address of the namespace
is local, so one HTTP/1.1 server on 0.0.0.0:PORT answers as every pod, and each
connection's server socket carries the pod's own address (what the agent keys by).

Commands on stdin, one a line; one answer line each on stdout:
    hit IP [IP ...]   one request on a new connection to each IP:PORT
                      -> "ok FAILED" (how many got no answer)
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

PORT = 8080
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
IN_FLIGHT = 64
TIMEOUT_S = 5.0


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _one(ip: str, gate: asyncio.Semaphore) -> bool:
    async with gate:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                reader, writer = await asyncio.open_connection(ip, PORT)
                try:
                    writer.write(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n")
                    await reader.readexactly(len(RESPONSE))
                finally:
                    writer.close()
            return True
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False


async def main() -> None:
    server = await asyncio.start_server(_serve, "0.0.0.0", PORT, backlog=1024)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    gate = asyncio.Semaphore(IN_FLIGHT)
    while line := (await reader.readline()).decode().split():
        if line[0] == "hit":
            done = await asyncio.gather(*(_one(ip, gate) for ip in line[1:]))
            print(f"ok {done.count(False)}", flush=True)
        else:
            print(f"error unknown command {line[0]!r}", flush=True)
    server.close()


if __name__ == "__main__":
    uvloop.run(main())
