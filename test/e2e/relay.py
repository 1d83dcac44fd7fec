"""A TCP relay for the Kind e2e path: listens on argv[3] and opens, for every accepted
connection, a new connection to argv[1]:argv[2] (a Service name), so kube-proxy picks a
backend per connection as it would for any in-cluster client. Standard library only;
it runs in the test-app image with `python -c`."""

import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def handle(client_r, client_w):
    try:
        backend_r, backend_w = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pipe(client_r, backend_w), pipe(backend_r, client_w))


async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[3]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
