"""The box proxy: what kube-proxy does for a Service, on loopback.

Each Service port gets a listening address on the host's loopback (127.0.200.x, the
Service port; a port below 1024 that cannot be bound without privilege is moved to
10000 + port; an address another program already uses is skipped).
Each new TCP connection goes to one backend picked at random among the ready
endpoints of the Service's EndpointSlices (with none ready, the serving terminating
ones, as kube-proxy falls back to them), which are watched, so a slice change takes
effect for the next connection at once. While a Service has no such endpoint its
listener is closed and connections are refused, like kube-proxy's REJECT rule.

With zones (a box of more than one zone), each Service port also gets one address
per zone: a client connecting there is a client on a node of that zone, and its
connections follow the endpoints' zone hints as kube-proxy on such a node does
(`aviator.box.endpoints.ready_backends`). The zoneless address uses every endpoint,
as kube-proxy on a node without a zone label does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aviator.box.addresses import AddressPool
from aviator.box.endpoints import Backend, proxied, ready_backends, service_of
from aviator.box.mirror import Mirror, cancel_all, key_of
from aviator.kube.client import KubeClient
from aviator.kube.resources import ENDPOINTSLICES, SERVICES

log = logging.getLogger(__name__)

Obj = dict[str, Any]
SERVICE_POOL = ("127.0.200.1", "127.0.254.254")
_CHUNK = 65536


class Network(Protocol):
    def host_listener(self, ip: str, port: int, backlog: int = 1024) -> socket.socket: ...


class PortListener:
    """One Service port: a listening socket while there are ready backends."""

    def __init__(
        self, network: Network, service: str, port_name: str | None, ip: str, port: int
    ) -> None:
        self.network = network
        self.service = service
        self.port_name = port_name
        self.ip = ip
        self.port = port
        self.backends: list[Backend] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self._rng = random.Random()
        # Held here: once a client's transport is gone asyncio's server no longer
        # references the connection's task, and a pending task collected as garbage
        # takes its transports down in no set order.
        self.relays: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    async def set_backends(self, backends: list[Backend]) -> None:
        async with self._lock:
            self.backends = backends
            if backends and self._server is None:
                self._server = await self._listen()
            elif not backends and self._server is not None:
                self._server.close()
                self._server = None

    async def _listen(self) -> asyncio.Server:
        try:
            sock = self.network.host_listener(self.ip, self.port)
        except PermissionError:
            # Ports below 1024 need privilege; fall back to a high port once, for good.
            self.port = 10000 + self.port
            sock = self.network.host_listener(self.ip, self.port)
        return await asyncio.start_server(self._relay, sock=sock)

    async def close(self) -> None:
        async with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        backends = self.backends
        if not backends:
            client_w.close()
            return
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None  # asyncio runs each connection's callback as a task
        self.relays.add(task)
        try:
            await relay(client_r, client_w, self._rng.choice(backends))
        finally:
            self.relays.discard(task)


async def relay(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, backend: Backend
) -> None:
    """Connect to the backend and copy both ways until both sides are done; a backend
    that cannot be reached resets the client's connection."""
    try:
        backend_r, backend_w = await asyncio.open_connection(*backend)
    except OSError:
        _abort(client_w)
        return
    try:
        await asyncio.gather(_pipe(client_r, backend_w), _pipe(backend_r, client_w))
    finally:
        for w in (client_w, backend_w):
            with contextlib.suppress(Exception):
                w.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if not writer.is_closing() and writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        _abort(writer)


class BoxProxy:
    """Follows Services and EndpointSlices and keeps one PortListener per Service port."""

    def __init__(
        self,
        client: KubeClient,
        network: Network,
        pool: AddressPool | None = None,
        on_change: Callable[[], None] | None = None,
        zones: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.zones = list(zones)
        # zone -> service -> port name: the addresses of clients in that zone.
        self.zone_listeners: dict[str, dict[str, dict[str, PortListener]]] = {
            z: {} for z in self.zones
        }
        self.network = network
        self.pool = pool or AddressPool(*SERVICE_POOL)
        self.on_change = on_change or (lambda: None)
        self.services: dict[str, Obj] = {}
        self.slices_by_service: dict[str, dict[str, Obj]] = {}
        self.listeners: dict[str, dict[str, PortListener]] = {}  # service -> port name
        self._service_mirror = Mirror(client, SERVICES, self._on_service)
        self._slice_mirror = Mirror(client, ENDPOINTSLICES, self._on_slice)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._service_mirror.run(), name="proxy services"),
            asyncio.create_task(self._slice_mirror.run(), name="proxy slices"),
        ]
        await self._service_mirror.synced.wait()
        await self._slice_mirror.synced.wait()

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        for table in [self.listeners, *self.zone_listeners.values()]:
            for ports in table.values():
                for listener in ports.values():
                    await listener.close()
                    await cancel_all(list(listener.relays))

    def table(self) -> dict[str, dict[str, str]]:
        """'ns/name' -> {port name or port number: 'ip:port'} for every proxied Service."""
        return {
            svc: {name: lst.address for name, lst in ports.items()}
            for svc, ports in sorted(self.listeners.items())
        }

    def zone_table(self) -> dict[str, dict[str, dict[str, str]]]:
        """zone -> 'ns/name' -> {port: 'ip:port'}: the addresses of clients in each zone."""
        return {
            zone: {
                svc: {name: lst.address for name, lst in ports.items()}
                for svc, ports in sorted(table.items())
            }
            for zone, table in sorted(self.zone_listeners.items())
        }

    def zone_backend_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """zone -> 'ns/name' -> {port: how many endpoints that zone's clients use}."""
        return {
            zone: {
                svc: {name: len(lst.backends) for name, lst in ports.items()}
                for svc, ports in sorted(table.items())
            }
            for zone, table in sorted(self.zone_listeners.items())
        }

    def backend_counts(self) -> dict[str, dict[str, int]]:
        """'ns/name' -> {port: how many endpoints new connections are spread over}."""
        return {
            svc: {name: len(lst.backends) for name, lst in ports.items()}
            for svc, ports in sorted(self.listeners.items())
        }

    def backends(self, service: str) -> dict[str, list[Backend]]:
        return {name: lst.backends for name, lst in self.listeners.get(service, {}).items()}

    async def _on_service(self, kind: str, service: Obj) -> None:
        key = key_of(service)
        if kind == "DELETED" or not proxied(service):
            self.services.pop(key, None)
            for listener in self.listeners.pop(key, {}).values():
                await listener.close()
            self.pool.release(key)
            for zone, table in self.zone_listeners.items():
                for listener in table.pop(key, {}).values():
                    await listener.close()
                self.pool.release(f"{key}@{zone}")
        else:
            self.services[key] = service
        await self._sync(key)
        self.on_change()

    async def _on_slice(self, kind: str, slice_: Obj) -> None:
        service = service_of(slice_)
        if service is None:
            return
        slices = self.slices_by_service.setdefault(service, {})
        if kind == "DELETED":
            slices.pop(key_of(slice_), None)
        else:
            slices[key_of(slice_)] = slice_
        await self._sync(service)

    async def _sync(self, key: str) -> None:
        service = self.services.get(key)
        if service is None:
            return
        slices = list(self.slices_by_service.get(key, {}).values())
        await self._sync_ports(key, service, slices, self.listeners.setdefault(key, {}), None)
        for zone, table in self.zone_listeners.items():
            await self._sync_ports(key, service, slices, table.setdefault(key, {}), zone)
        self.on_change()

    async def _sync_ports(
        self,
        key: str,
        service: Obj,
        slices: list[Obj],
        ports: dict[str, PortListener],
        zone: str | None,
    ) -> None:
        """One address's listeners of a Service (the zoneless one, or a zone's)."""
        service_ports = [int(p["port"]) for p in service.get("spec", {}).get("ports") or []]
        pool_key = key if zone is None else f"{key}@{zone}"
        ip = self.pool.allocate(pool_key, usable=lambda a: self._free(a, service_ports))
        wanted: set[str] = set()
        for p in service.get("spec", {}).get("ports") or []:
            name = p.get("name") or str(p["port"])
            wanted.add(name)
            listener = ports.get(name)
            if listener is None or listener.port not in (p["port"], 10000 + p["port"]):
                if listener is not None:
                    await listener.close()
                listener = ports[name] = PortListener(
                    self.network, key, p.get("name"), ip, int(p["port"])
                )
            try:
                await listener.set_backends(ready_backends(p.get("name"), slices, zone))
            except OSError as err:
                log.error("service %s port %s: cannot listen on %s: %s", key, name, ip, err)
        for name in [n for n in ports if n not in wanted]:
            await ports.pop(name).close()

    def _free(self, ip: str, ports: list[int]) -> bool:
        """Whether the host has nothing listening on ip at these ports."""
        for port in ports:
            for candidate in (port, 10000 + port):
                try:
                    self.network.host_listener(ip, candidate, backlog=1).close()
                    break
                except PermissionError:
                    continue
                except OSError:
                    return False
        return True
