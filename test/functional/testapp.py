"""The Aviator test app: a tiny HTTP/1.1 keep-alive server that answers after a latency.

Standard library only, one file, so the same program runs as a container image
(`Dockerfile` next to it) and as a local process in the cluster in a box.

Environment:
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
  ERROR_RATE    fraction of requests answered 500 (default 0)
  DRAIN         after SIGTERM, keep serving this long before exiting (default 5s), so
                Service proxies see the pod terminating before it stops listening
  POD_NAME      name reported in the X-Served-By header (default $HOSTNAME)
  CONTROL_FILE  optional file holding settings as a query string ("latency=2s&mode=fixed");
                re-read when it changes; when it is removed the env settings apply again

Paths:
  GET  /healthz            200 at once (readiness probes; never delayed)
  GET  /control            the current settings as JSON
  POST /control?latency=2s&mode=fixed&error_rate=0&sigma=0.5
                           change settings at run time (turn a pod slow and back)
  anything else            waits the latency, then 200 (or 500) with a small JSON body
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import socket
import sys
from dataclasses import asdict, dataclass, replace
from urllib.parse import parse_qs, urlsplit

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s|m)?\s*$")
_UNIT_S = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
MODES = ("fixed", "lognormal", "erratic")


def parse_duration(text: str) -> float:
    """'10ms' -> 0.01 seconds; a bare number is milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 10ms, 0.5s)")
    value = float(match.group(1))
    unit = match.group(2)
    return value * (_UNIT_S[unit] if unit else 1e-3)


@dataclass(frozen=True)
class Settings:
    latency_s: float = 0.01
    mode: str = "fixed"
    sigma: float = 0.5
    spike_rate: float = 0.05
    spike_factor: float = 20.0
    error_rate: float = 0.0

    def validated(self) -> Settings:
        if self.mode not in MODES:
            raise ValueError(f"MODE must be one of {', '.join(MODES)}, not {self.mode!r}")
        for name in ("spike_rate", "error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {value}")
        if self.latency_s < 0 or self.sigma < 0 or self.spike_factor < 0:
            raise ValueError("latency, sigma and spike factor must not be negative")
        return self

    def draw_latency_s(self, rng: random.Random) -> float:
        if self.mode == "lognormal":
            return self.latency_s * math.exp(rng.gauss(0.0, self.sigma))
        if self.mode == "erratic" and rng.random() < self.spike_rate:
            return self.latency_s * self.spike_factor
        return self.latency_s

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["latency"] = f"{self.latency_s * 1000:g}ms"
        return out


def settings_from_env(env: dict[str, str]) -> Settings:
    return Settings(
        latency_s=parse_duration(env.get("LATENCY", "10ms")),
        mode=env.get("MODE", "fixed"),
        sigma=float(env.get("SIGMA", "0.5")),
        spike_rate=float(env.get("SPIKE_RATE", "0.05")),
        spike_factor=float(env.get("SPIKE_FACTOR", "20")),
        error_rate=float(env.get("ERROR_RATE", "0")),
    ).validated()


def settings_from_query(current: Settings, query: str) -> Settings:
    """Apply ?latency=..&mode=..&sigma=..&error_rate=..&spike_rate=..&spike_factor=.."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    changes: dict[str, object] = {}
    if "latency" in params:
        changes["latency_s"] = parse_duration(params["latency"])
    if "mode" in params:
        changes["mode"] = params["mode"]
    for name in ("sigma", "error_rate", "spike_rate", "spike_factor"):
        if name in params:
            changes[name] = float(params[name])
    return replace(current, **changes).validated()  # type: ignore[arg-type]


class App:
    """The request handler and its run-time settings."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.rng = random.Random()
        self.requests = 0

    async def handle(self, method: str, target: str) -> tuple[int, dict[str, object]]:
        url = urlsplit(target)
        if url.path == "/healthz":
            return 200, {"status": "ok"}
        if url.path == "/control":
            if method == "POST":
                try:
                    self.settings = settings_from_query(self.settings, url.query)
                except ValueError as err:
                    return 400, {"error": str(err)}
            return 200, self.settings.as_json()
        self.requests += 1
        settings = self.settings
        delay = settings.draw_latency_s(self.rng)
        if delay > 0:
            await asyncio.sleep(delay)
        if settings.error_rate and self.rng.random() < settings.error_rate:
            return 500, {"pod": self.name, "error": "injected"}
        return 200, {"pod": self.name, "latency_ms": round(delay * 1000, 3)}


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


async def serve_connection(
    app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """HTTP/1.1 with keep-alive; one request at a time per connection (no pipelining)."""
    try:
        while True:
            request_line = await reader.readline()
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
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                f"X-Served-By: {app.name}\r\n"
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


def read_text(path: str) -> str:
    # A few bytes from a local file: blocking here is cheaper than a thread hop.
    with open(path) as f:
        return f.read().strip()


async def watch_control_file(app: App, base: Settings, path: str) -> None:
    """Apply the control file's settings over the env settings whenever it changes."""
    seen: tuple[float, int] | None = None
    while True:
        try:
            st = os.stat(path)
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp != seen:
            seen = stamp
            try:
                text = "" if stamp is None else read_text(path)
                app.settings = settings_from_query(base, text)
                print(f"testapp {app.name}: settings {app.settings.as_json()}", flush=True)
            except (OSError, ValueError) as err:
                print(f"testapp {app.name}: control file: {err}", flush=True)
        await asyncio.sleep(0.1)


async def main() -> int:
    env = dict(os.environ)
    try:
        settings = settings_from_env(env)
    except ValueError as err:
        print(f"testapp: {err}", file=sys.stderr)
        return 2
    name = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
    app = App(settings, name)
    host = env.get("LISTEN_ADDR", "0.0.0.0")
    port = int(env.get("PORT", "8080"))
    server = await asyncio.start_server(
        lambda r, w: serve_connection(app, r, w), host, port, reuse_address=True, backlog=512
    )
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
    print(f"testapp {name}: listening on {host}:{port} {settings.as_json()}", flush=True)
    await stop.wait()
    drain_s = parse_duration(env.get("DRAIN", "5s"))
    print(f"testapp {name}: terminating; serving {drain_s:g}s more", flush=True)
    await asyncio.sleep(drain_s)
    if watcher is not None:
        watcher.cancel()
    server.close()
    print(f"testapp {name}: stopping after {app.requests} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
