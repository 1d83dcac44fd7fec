"""A pod's server as the agent meets it on a real node: in a network namespace of its
own, created and listening after the program was loaded (so never seeded from /proc),
serving a client over one keep-alive connection. Its requests are the server samples
of its address, every one of them, not only the first."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from bpf_loadgen import DelayServer, KeepAliveClient
from bpf_snapshots import delta, wait_for
from conftest import TEST_BOUND_S

from aviator.agent.bpf import BpfLatencySource, EndpointKey

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_new_netns(make: Callable[[], T]) -> tuple[T, int]:
    """`make()` run on a thread moved into a new network namespace (loopback up): the
    sockets it creates live there. Returns what it made and the namespace's inode."""
    out: list[tuple[T, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(_CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            inode = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino
            out.append((make(), inode))
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def serve_and_connect(host: str) -> tuple[DelayServer, KeepAliveClient]:
    """A server listening on `host` now, and one keep-alive client connected to it."""
    server = DelayServer(host, lambda: 0.002).start()
    return server, KeepAliveClient(server.host, server.port)


def test_keepalive_requests_to_a_server_in_a_namespace_made_after_load(
    latency_source: BpfLatencySource,
) -> None:
    host = "127.0.61.1"
    before = latency_source.read()
    (server, client), netns = in_new_netns(lambda: serve_and_connect(host))
    try:
        assert netns != os.stat("/proc/self/ns/net").st_ino
        for _ in range(30):
            client.request()
        key = EndpointKey(host, server.port, "server")
        after = wait_for(latency_source, lambda s: delta(before, s, key).count >= 30)
        sockets = [s for s in latency_source.sockets() if s.local == (host, server.port)]
    finally:
        client.close()
        server.stop()
    assert delta(before, after, key).count == 30
    assert delta(before, after, EndpointKey(host, server.port, "client")).count == 30
    assert [(s.role, s.netns) for s in sockets] == [("server", netns)]


def test_a_connection_first_seen_mid_stream_is_the_server_of_a_listener_made_after_load(
    latency_source: BpfLatencySource,
) -> None:
    """The connection's entry is lost (an LRU eviction, a prune) while the connection
    goes on: the program adopts it again on its next bytes, and it is the server end
    because the program tracked the namespace's listener itself (never seeded from
    /proc: it listened after the program loaded)."""
    host = "127.0.61.2"
    (server, client), _netns = in_new_netns(lambda: serve_and_connect(host))
    try:
        client.request()
        table = latency_source._program.bpf[b"sockets"]  # the loaded program's map
        mine = [
            s.sk for s in latency_source.sockets() if (host, server.port) in (s.local, s.remote)
        ]
        assert len(mine) == 2  # both ends, seen at the handshake
        for sk in mine:
            del table[table.Key(sk)]
        key = EndpointKey(host, server.port, "server")
        before = latency_source.read()
        for _ in range(20):
            client.request()
        after = wait_for(latency_source, lambda s: delta(before, s, key).count >= 19)
        sockets = [s for s in latency_source.sockets() if s.local == (host, server.port)]
    finally:
        client.close()
        server.stop()
    # The first request after the loss may be missed (its start came before the
    # adoption); every later one is the server's.
    assert delta(before, after, key).count >= 19
    assert [s.role for s in sockets] == ["server"]
