"""The Aviator test app: a tiny server that answers after a latency, over HTTP/1.1
(keep-alive), HTTP/2 without TLS (h2c) or gRPC.

The same program runs as a container image (`Dockerfile` next to it) and as a local
process in the cluster in a box. This file is the entry point and the HTTP/1.1
server (standard library only); `testapp_core.py` holds the settings and the answer
every protocol gives, `testapp_h2c.py` (library `h2`) and `testapp_grpc.py` (library
`grpcio`) the other two servers, imported only in their mode.

Environment:
  PROTOCOL      http1 | h2c | grpc (default http1)
                  http1: HTTP/1.1 keep-alive, one request at a time per connection
                  h2c:   HTTP/2 with prior knowledge, many streams per connection; a
                         connection that starts with an HTTP/1.1 request line is served
                         as HTTP/1.1 (so httpGet readiness probes work)
                  grpc:  any unary method is a measured request; also the standard
                         grpc.health.v1.Health/Check and aviator.testapp.TestApp/Control
                         (request: a control query string; reply: the settings as JSON)
  PORT          port to listen on (default 8080)
  LISTEN_ADDR   address to listen on (default 0.0.0.0)
  LATENCY       response latency, e.g. "10ms", "0.5s", "2s" (default 10ms)
  MODE          fixed | lognormal | erratic (default fixed)
                  fixed:     every request takes LATENCY
                  lognormal: median LATENCY, log-space standard deviation SIGMA
                  erratic:   LATENCY, but SPIKE_RATE of requests take SPIKE_FACTOR x LATENCY
  SIGMA         lognormal spread (default 0.5)
  SPIKE_RATE    erratic: fraction of slow requests (default 0.05)
  SPIKE_FACTOR  erratic: how much slower they are (default 20)
  ERROR_RATE    fraction of requests answered at once with an error: HTTP 503, gRPC
                UNAVAILABLE (default 0)
  DRAIN         after SIGTERM, keep serving this long before exiting (default 5s), so
                Service proxies see the pod terminating before it stops listening
  SLOTS         queue mode: at most this many requests served at once, the rest wait
                in arrival order (default: unset, no limit); see testapp_queue.py
  METRICS_PORT  serve the Prometheus text exposition (GET /metrics: the queue's length,
                busy slots, requests) on this port (default: unset, none)
  POD_NAME      name reported in the X-Served-By header / trailer (default $HOSTNAME)
  CONTROL_FILE  optional file holding settings as a query string ("latency=2s&mode=fixed");
                re-read when it changes; when it is removed the env settings apply again

Paths (HTTP/1.1 and h2c):
  GET  /healthz            200 at once (readiness probes; never delayed)
  GET  /control            the current settings and counts (requests, errors) as JSON
  POST /control?latency=2s&mode=fixed&error_rate=0&sigma=0.5
                           change settings at run time (turn a pod slow and back)
  anything else            waits the latency, then 200 with a small JSON body (or 503
                           at once, ERROR_RATE of the time)
  Every response echoes the request's X-Request-Id header, when it has one, so a client
  that may have several requests on a connection can tell which one it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys

from testapp_core import (
    MODES,
    PROTOCOLS,
    App,
    Settings,
    parse_duration,
    protocol_from_env,
    settings_from_env,
    settings_from_query,
    watch_control_file,
)
from testapp_queue import Slots, serve_metrics

__all__ = [
    "MODES",
    "PROTOCOLS",
    "App",
    "Settings",
    "parse_duration",
    "serve_connection",
    "settings_from_env",
    "settings_from_query",
]

H2_PREFACE_LINE = b"PRI * HTTP/2.0\r\n"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def serve_connection(
    app: App,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first_line: bytes | None = None,
) -> None:
    """HTTP/1.1 with keep-alive; one request at a time per connection (no pipelining).
    `first_line` is a request line already read (h2c mode looked at it)."""
    try:
        while True:
            request_line = first_line if first_line is not None else await reader.readline()
            first_line = None
            if not request_line:
                return
            parts = request_line.decode("latin-1").split()
            if len(parts) != 3:
                return
            method, target, version = parts
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or "0")
            if length:
                await reader.readexactly(length)
            connection = headers.get("connection", "").lower()
            keep_alive = connection != "close" and (
                version == "HTTP/1.1" or connection == "keep-alive"
            )
            status, body = await app.handle(method, target)
            payload = json.dumps(body).encode()
            request_id = headers.get("x-request-id")
            echo = "" if request_id is None else f"X-Request-Id: {request_id}\r\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                f"X-Served-By: {app.name}\r\n{echo}"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + payload)
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve_h2c_or_http1(
    app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """h2c mode: HTTP/2 when the connection opens with the preface, else HTTP/1.1."""
    from testapp_h2c import serve_h2_connection

    try:
        first = await reader.readline()
    except (ConnectionError, ValueError):
        writer.close()
        return
    if first == H2_PREFACE_LINE:
        await serve_h2_connection(app, reader, writer, first)
    else:
        await serve_connection(app, reader, writer, first)


async def main() -> int:
    env = dict(os.environ)
    try:
        settings = settings_from_env(env)
        protocol = protocol_from_env(env)
    except ValueError as err:
        print(f"testapp: {err}", file=sys.stderr)
        return 2
    name = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
    try:
        slots = Slots(int(env["SLOTS"])) if env.get("SLOTS") else None
    except ValueError as err:
        print(f"testapp: {err}", file=sys.stderr)
        return 2
    app = App(settings, name, slots)
    host = env.get("LISTEN_ADDR", "0.0.0.0")
    port = int(env.get("PORT", "8080"))
    if env.get("METRICS_PORT"):
        await asyncio.start_server(
            lambda r, w: serve_metrics(slots, app, r, w),
            host,
            int(env["METRICS_PORT"]),
            reuse_address=True,
        )
    if protocol == "grpc":
        from testapp_grpc import start_grpc_server

        grpc_server = await start_grpc_server(app, host, port)

        async def stop_grpc() -> None:
            await grpc_server.stop(None)

        stopper = stop_grpc
    else:
        handler = serve_h2c_or_http1 if protocol == "h2c" else serve_connection
        server = await asyncio.start_server(
            lambda r, w: handler(app, r, w), host, port, reuse_address=True, backlog=512
        )

        async def stop_asyncio() -> None:
            server.close()

        stopper = stop_asyncio
    control_file = env.get("CONTROL_FILE")
    watcher = (
        asyncio.create_task(watch_control_file(app, settings, control_file))
        if control_file
        else None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"testapp {name}: listening on {host}:{port} ({protocol}) {settings.as_json()}",
        flush=True,
    )
    await stop.wait()
    drain_s = parse_duration(env.get("DRAIN", "5s"))
    print(f"testapp {name}: terminating; serving {drain_s:g}s more", flush=True)
    await asyncio.sleep(drain_s)
    if watcher is not None:
        watcher.cancel()
    await stopper()
    print(f"testapp {name}: stopping after {app.requests} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
