"""Streaming snapshots to every controller replica over websockets.

Every replica keeps a warm latency store (a new leader must not start blind), so the
agent holds one connection per replica: the `--controller-url`s, or the endpoints of
a headless Service found through its EndpointSlices. Each connection:

- speaks TLS (`wss://`): trusts only the controller's CA (a file, `StreamTls`, re-read
  at every connect: the kubelet updates the mounted ConfigMap) and checks the
  certificate against the stream Service's name whatever address it dials; it sends
  its token over plain `ws://` only to a loopback address (`token_may_go`);
- authenticates with `Authorization: Bearer <token>`, the token re-read from its file
  at every connect and every `token_reread_s` (kubelet rotates projected tokens; a
  changed token makes the connection reconnect with the new one);
- reconnects with exponential backoff (0.5 s doubling to 30 s, with jitter), whatever
  ended the connection: a refusal, a network error, or anything unforeseen (logged
  with its traceback; the connection task also runs under `supervise`);
- reads the controller's replies (error frames) whatever their shape: a reply that is
  not the object it expects is logged as it came, never a reason to stop;
- sends only what is produced while it is connected, from a small queue that drops
  the oldest snapshot when the controller does not keep up: windows are deltas the
  store files under their arrival time, so stale ones are worth nothing. A snapshot
  larger than the controller takes in one message goes as several
  (`schema.split_snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from aviator.informers import Backoff
from aviator.latency.schema import (
    RECONNECT_JITTER,
    RECONNECT_MAX_S,
    Snapshot,
    split_snapshot,
)
from aviator.latency.tls import client_context
from aviator.runtime.supervise import supervise

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"


class TokenFile:
    """A bearer token read from a file (and the first existing fallback file)."""

    def __init__(self, *paths: str | Path, reread_s: float = 60.0) -> None:
        self.paths = [Path(p) for p in paths]
        self.reread_s = reread_s
        self._token = ""
        self._read_at: float | None = None

    def token(self) -> str:
        """The current token ("" when no file can be read); re-read when due."""
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.reread_s:
            self.reload()
        return self._token

    def reload(self) -> str:
        self._read_at = time.monotonic()
        for path in self.paths:
            try:
                self._token = path.read_text().strip()
                return self._token
            except OSError:
                continue
        if self.paths:
            log.warning("no token file readable among %s", ", ".join(map(str, self.paths)))
        self._token = ""
        return self._token


@dataclass(frozen=True, slots=True)
class StreamTls:
    """How the agent checks the controller: the CA file and the name to verify."""

    ca_file: Path
    server_name: str


class StreamRefused(Exception):
    """The agent will not open this stream (and says why)."""


def token_may_go(url: str) -> bool:
    """Whether a bearer token may be sent to `url`: over TLS always, in clear only to
    a loopback address (the controller on the same machine)."""
    parts = urlsplit(url)
    if parts.scheme == "wss":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControllerConnection:
    """One websocket to one controller replica; `run()` until cancelled."""

    def __init__(
        self,
        url: str,
        tokens: TokenFile,
        session: aiohttp.ClientSession,
        *,
        queue_size: int = 4,
        backoff: Backoff | None = None,
        tls: StreamTls | None = None,
    ) -> None:
        self.url = url
        self._tls = tls
        self._tokens = tokens
        self._session = session
        self._queue: deque[list[str]] = deque(maxlen=queue_size)
        self._wakeup = asyncio.Event()
        self._backoff = backoff or Backoff(
            initial_s=0.5, max_s=RECONNECT_MAX_S, jitter=RECONNECT_JITTER
        )
        self.connected = False
        self.sent = 0
        self.dropped = 0
        self.errors_received = 0
        self.connects = 0
        self.last_error = ""
        # Set on every connect and disconnect (for whoever wants to watch the state).
        self.changed = asyncio.Event()

    def offer(self, frames: list[str]) -> None:
        """Queue one encoded snapshot, in one frame or several (ignored while
        disconnected)."""
        if not self.connected:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(frames)
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            token = self._tokens.reload()
            try:
                await self._session_once(token)
                self.last_error = "closed by the controller"
            except aiohttp.WSServerHandshakeError as exc:
                self.last_error = f"handshake refused: HTTP {exc.status}"
            except StreamRefused as exc:
                self.last_error = str(exc)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # unforeseen: say so, and dial again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("stream to %s failed", self.url)
            finally:
                self.connected = False
                self._queue.clear()
                self.changed.set()
            delay = self._backoff.failure(time.monotonic())
            log.info("stream to %s down (%s); retrying in %.1fs", self.url, self.last_error, delay)
            await asyncio.sleep(delay)

    def _tls_options(self) -> dict[str, Any]:
        """ws_connect's TLS arguments for this URL; refuses what must not be dialled."""
        if not token_may_go(self.url):
            raise StreamRefused(f"refusing to send the token in clear to {self.url}: use wss://")
        if not self.url.startswith("wss://"):
            return {}
        if self._tls is None:
            raise StreamRefused(f"no CA to check {self.url} against (--controller-ca)")
        try:
            ca = self._tls.ca_file.read_bytes()
            ctx = client_context(ca)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise StreamRefused(f"the CA file {self._tls.ca_file} is not usable: {exc}") from None
        return {"ssl": ctx, "server_hostname": self._tls.server_name}

    async def _session_once(self, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        tls = self._tls_options()
        async with self._session.ws_connect(self.url, headers=headers, heartbeat=30.0, **tls) as ws:
            self.connected = True
            self.connects += 1
            self.changed.set()
            log.info("streaming to %s", self.url)
            reader = asyncio.get_running_loop().create_task(self._read_replies(ws))
            try:
                while not ws.closed and not reader.done():
                    if self._tokens.token() != token:
                        log.info("token changed; reconnecting to %s", self.url)
                        self._backoff.reset()
                        return
                    if not self._queue:
                        # Sleep until a snapshot is queued, the controller hangs up, or
                        # it is time to look at the token file again.
                        self._wakeup.clear()
                        waiter = asyncio.get_running_loop().create_task(self._wakeup.wait())
                        await asyncio.wait(
                            {waiter, reader}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED
                        )
                        waiter.cancel()
                        continue
                    for frame in self._queue.popleft():
                        await ws.send_str(frame)
                    self.sent += 1
                    # A connection that carried data is healthy: start backoff afresh.
                    self._backoff.reset()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read_replies(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.errors_received += 1
                log.warning("controller %s: %s", self.url, describe_reply(msg.data))


class StreamFanout:
    """The set of controller connections; publishes each snapshot to all of them."""

    def __init__(
        self, tokens: TokenFile, *, queue_size: int = 4, tls: StreamTls | None = None
    ) -> None:
        self._tokens = tokens
        self.tls = tls
        self._queue_size = queue_size
        self._session: aiohttp.ClientSession | None = None
        self.connections: dict[str, ControllerConnection] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def set_urls(self, urls: Iterable[str]) -> None:
        """Connect to exactly these URLs (new ones are dialled, gone ones closed)."""
        wanted = set(urls)
        for url in [u for u in self._tasks if u not in wanted]:
            self._tasks.pop(url).cancel()
            self.connections.pop(url, None)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        for url in sorted(wanted - set(self._tasks)):
            conn = ControllerConnection(
                url, self._tokens, self._session, queue_size=self._queue_size, tls=self.tls
            )
            self.connections[url] = conn
            self._tasks[url] = asyncio.get_running_loop().create_task(
                supervise(f"stream to {url}", conn.run), name=f"stream-{url}"
            )

    def publish(self, snapshot: Snapshot) -> None:
        if not self.connections:
            return
        frames = split_snapshot(snapshot)
        for conn in self.connections.values():
            conn.offer(frames)

    def any_connected(self) -> bool:
        return any(c.connected for c in self.connections.values())

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.connections.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def describe_reply(text: str, limit: int = 300) -> str:
    """What a controller's reply says: the `error` of an error frame, else the text as it
    came (cut at `limit`), whatever JSON (or not) it is."""
    try:
        reply: Any = json.loads(text)
    except ValueError:
        reply = None
    error = reply.get("error") if isinstance(reply, dict) else None
    return (error if isinstance(error, str) else text)[:limit]


def urls_from_slices(
    slices: Iterable[dict[str, Any]], *, scheme: str = "ws", port_name: str | None = None
) -> list[str]:
    """Stream URLs of the ready endpoints in a Service's EndpointSlices.

    The port is the one named `port_name`, else the slice's only/first TCP port.
    """
    urls: set[str] = set()
    for sl in slices:
        ports = [p for p in sl.get("ports") or [] if (p.get("protocol") or "TCP") == "TCP"]
        if port_name is not None:
            ports = [p for p in ports if p.get("name") == port_name]
        if not ports or not isinstance(ports[0].get("port"), int):
            continue
        port = ports[0]["port"]
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            for addr in ep.get("addresses") or []:
                host = f"[{addr}]" if ":" in addr else addr
                urls.add(f"{scheme}://{host}:{port}{STREAM_PATH}")
    return sorted(urls)
