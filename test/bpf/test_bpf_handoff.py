"""Hand-off on the real kernel: the program names each connection (tuple, network
namespace, request state) and the executor ends exactly the idle client connections
of the right pod and port, through sock_diag, and nothing else."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from bpf_loadgen import REQUEST, DelayServer
from conftest import TEST_BOUND_S

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.handoff.executor import DiagOpener, HandOffExecutor
from aviator.agent.handoff.select import Target

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

POD = "127.0.41.1"
OTHER_POD = "127.0.41.2"
NODE = "127.0.41.254"


class Conn:
    """A keep-alive HTTP/1.1 connection, optionally from a chosen source address."""

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.sock.connect((host, port))

    def send(self) -> None:
        self.sock.sendall(REQUEST)

    def receive(self) -> None:
        buf = b""
        while not buf.endswith(b"\r\n\r\nxx"):
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            buf += data

    def request(self) -> None:
        self.send()
        self.receive()

    def alive(self) -> bool:
        """Whether a request still works on this connection."""
        try:
            self.request()
        except OSError:
            return False
        return True

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)


def _wait_tracked(source: BpfLatencySource, conns: list[Conn]) -> None:
    # The program adds a connection at the handshake: it is in the map by now.
    tracked = {s.remote for s in source.sockets() if s.role == "server"}
    missing = [c.local for c in conns if c.local not in tracked]
    assert not missing, f"not tracked: {missing}"


def test_sockets_map_names_both_ends_and_the_namespace(latency_source: BpfLatencySource) -> None:
    server = DelayServer("127.0.41.10", lambda: 0.0).start()
    try:
        conn = Conn(server.host, server.port)
        conn.request()
        server_side = [s for s in latency_source.sockets() if s.remote == conn.local]
        client_side = [s for s in latency_source.sockets() if s.local == conn.local]
        netns = os.stat("/proc/self/ns/net").st_ino
        (srv,) = server_side
        (cli,) = client_side
        assert (srv.role, srv.local, srv.netns) == ("server", (server.host, server.port), netns)
        assert (cli.role, cli.remote, cli.netns) == ("client", (server.host, server.port), netns)
        assert srv.requests == cli.requests == 1
        assert srv.start_ns == 0 and srv.idle_ns > 0
        assert latency_source.socket(srv.sk) == srv
        conn.sock.close()
    finally:
        server.stop()


def test_only_idle_client_connections_of_the_pod_and_port_are_ended(
    latency_source: BpfLatencySource, ending: DiagOpener
) -> None:
    hold = threading.Event()
    hold.set()
    pod = DelayServer(POD, lambda: 0.0, hold=hold).start()
    pod_other_port = DelayServer(POD, lambda: 0.0).start()
    other_pod = DelayServer(OTHER_POD, lambda: 0.0).start()
    servers = [pod, pod_other_port, other_pod]
    try:
        idle = [Conn(POD, pod.port) for _ in range(3)]
        in_flight = Conn(POD, pod.port)
        other_port = Conn(POD, pod_other_port.port)
        other = Conn(OTHER_POD, other_pod.port)
        probe = Conn(POD, pod.port, source=NODE)  # the kubelet, from the node's address
        outbound = Conn(OTHER_POD, other_pod.port, source=POD)  # the pod's own client
        for c in [*idle, in_flight, other_port, other, probe, outbound]:
            c.request()
        _wait_tracked(latency_source, [*idle, in_flight, other_port, other, probe, outbound])

        hold.clear()  # the next request on the pod's port waits in the server
        in_flight.send()
        assert pod.wait_received(len(idle) + 3)

        executor = HandOffExecutor(
            table=latency_source, open_diag=ending, node_addresses=[NODE], fresh_s=0.0
        )
        h = executor.begin(Target("ns/pod", POD, frozenset({pod.port})), "ns/policy", 0.0)
        executor.step()
        assert h.ended == len(idle)
        assert h.remaining == 1 and h.active  # the in-flight one waits

        for c in idle:
            assert not c.alive()
        hold.set()
        in_flight.receive()  # its request completes: never cut
        for c in (in_flight, other_port, other, probe, outbound):
            assert c.alive()

        # Now idle, the last one goes at the next step; then the hand-off is complete.
        executor.step()
        assert h.ended == len(idle) + 1
        assert not in_flight.alive()
        executor.step()
        assert h.outcome == "complete"
        for c in (other_port, other, probe, outbound):
            assert c.alive()
    finally:
        for s in servers:
            s.stop()


def test_pacing_ends_connections_over_the_period(
    latency_source: BpfLatencySource, ending: DiagOpener
) -> None:
    pod = DelayServer("127.0.41.20", lambda: 0.0).start()
    try:
        conns = [Conn(pod.host, pod.port) for _ in range(10)]
        for c in conns:
            c.request()
        _wait_tracked(latency_source, conns)
        now = [0.0]
        executor = HandOffExecutor(
            table=latency_source, open_diag=ending, fresh_s=0.0, clock=lambda: now[0]
        )
        h = executor.begin(Target("ns/p", pod.host, frozenset({pod.port})), "ns/policy", 10.0)
        seen = []
        for t in (0.0, 2.5, 5.0, 7.5, 10.0):
            now[0] = t
            executor.step()
            seen.append(h.ended)
        assert seen == [0, 3, 5, 8, 10]
    finally:
        pod.stop()


def test_a_busy_connection_is_ended_right_after_its_answer(
    latency_source: BpfLatencySource, ending: DiagOpener
) -> None:
    hold = threading.Event()
    hold.set()
    pod = DelayServer("127.0.41.30", lambda: 0.0, hold=hold).start()
    try:
        busy = Conn(pod.host, pod.port)
        busy.request()
        _wait_tracked(latency_source, [busy])
        hold.clear()
        busy.send()
        assert pod.wait_received(2)
        executor = HandOffExecutor(table=latency_source, open_diag=ending, fresh_s=0.0, watch_s=2.0)
        h = executor.begin(Target("ns/p", pod.host, frozenset({pod.port})), "ns/policy", 0.0)
        # The answer goes out while the step watches: the connection ends right after it.
        threading.Timer(0.2, hold.set).start()
        executor.step()
        assert h.ended == 1
        busy.receive()  # the whole answer arrived first
        assert not busy.alive()
    finally:
        pod.stop()


def test_other_network_namespaces_can_be_excluded(
    latency_source: BpfLatencySource, ending: DiagOpener
) -> None:
    pod = DelayServer("127.0.41.40", lambda: 0.0).start()
    try:
        c = Conn(pod.host, pod.port)
        c.request()
        _wait_tracked(latency_source, [c])
        executor = HandOffExecutor(
            table=latency_source,
            open_diag=ending,
            fresh_s=0.0,
            netns_allowed=lambda ns: ns != os.stat("/proc/self/ns/net").st_ino,
        )
        h = executor.begin(Target("ns/p", pod.host, frozenset({pod.port})), "ns/policy", 0.0)
        executor.step()
        assert h.ended == 0 and h.outcome == "complete"  # nothing of it in an allowed one
        assert c.alive()
    finally:
        pod.stop()


def test_a_client_sending_back_to_back_loses_no_request(
    latency_source: BpfLatencySource, ending: DiagOpener
) -> None:
    """A client that sends each request the moment the previous answer arrives is idle
    only for that instant: it is never quiet, so it is left on its pod and loses no
    request, while a connection that pauses is ended. (Ending it at an idle instant,
    `quiet_s=0`, loses the request already on its way.)"""
    pod = DelayServer("127.0.41.50", lambda: 0.002).start()
    stop = threading.Event()
    failures: list[OSError] = []
    sent = [0]

    def back_to_back(c: Conn) -> None:
        while not stop.is_set() and sent[0] < 20_000:
            try:
                c.request()
            except OSError as exc:
                failures.append(exc)
                return
            sent[0] += 1

    try:
        busy, pausing = Conn(pod.host, pod.port), Conn(pod.host, pod.port)
        busy.request()
        pausing.request()
        _wait_tracked(latency_source, [busy, pausing])
        client = threading.Thread(target=back_to_back, args=(busy,), daemon=True)
        client.start()
        # A pause of half a second is the pausing connection's, never the busy loop's.
        executor = HandOffExecutor(
            table=latency_source, open_diag=ending, fresh_s=0.0, quiet_s=0.5, watch_s=0.2
        )
        h = executor.begin(Target("ns/p", pod.host, frozenset({pod.port})), "ns/policy", 0.0)
        steps = 0
        while (h.ended == 0 or sent[0] < 200) and steps < 100 and not failures:
            executor.step()
            steps += 1
        stop.set()
        client.join(10)
        assert failures == [], f"after {sent[0]} requests"
        assert h.ended == 1 and sent[0] >= 200, (h.ended, sent[0], steps)
        assert not pausing.alive()
        assert busy.alive()
    finally:
        stop.set()
        pod.stop()
