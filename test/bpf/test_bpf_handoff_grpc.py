"""Hand-off of a gRPC connection on the real kernel, real library on both ends: a grpcio
channel (pick_first, one HTTP/2 connection) with slow RPCs in flight on the pod being
handed off, or a server-streaming RPC whose messages keep flowing. The connection is
busy while any stream is open (until its trailers: an answered stream still sending
messages is open), so every RPC completes OK with every message; the connection is
ended once the last stream closed, and the channel dials again for its next RPC.
Ending it with a stream open would fail those RPCs UNAVAILABLE."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import TEST_BOUND_S, require_bpf_privileges
from h2_servers import grpc_serving

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff.executor import DiagOpener, HandOffExecutor
from aviator.agent.handoff.netlink import open_diag
from aviator.agent.handoff.select import Target, is_idle, is_quiet

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

METHOD = "/aviator.test.Slow/Call"
STREAM_METHOD = "/aviator.test.Slow/Stream"


class Pod:
    """A grpcio server whose method answers with the caller's address (so a re-dial
    shows), after `hold` is set when asked for b"slow"; `arrived` counts RPCs seen."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.arrived = threading.Semaphore(0)
        self.permits = threading.Semaphore(0)  # Stream sends one message per permit

    def call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.arrived.release()
        if request == b"slow":
            self.hold.wait(30)
        return context.peer().encode()

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """`int(request)` messages, each once the test gives a permit for it, and the
        end (the trailers) at one more permit."""
        for i in range(int(request)):
            if not self.permits.acquire(timeout=30):
                return
            yield f"{i}".encode()
        self.permits.acquire(timeout=30)

    @contextlib.contextmanager
    def serve(self, host: str) -> Iterator[int]:
        methods = {
            "Call": grpc.unary_unary_rpc_method_handler(self.call),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
        }
        with grpc_serving(
            host, "aviator.test.Slow", methods, workers=16, on_stop=self.hold.set
        ) as port:
            yield port


class States:
    """A channel's connectivity states as they change (grpcio calls back on its thread)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.cond = threading.Condition()
        self.seen: list[grpc.ChannelConnectivity] = []
        channel.subscribe(self._on, try_to_connect=False)

    def _on(self, state: grpc.ChannelConnectivity) -> None:
        with self.cond:
            self.seen.append(state)
            self.cond.notify_all()

    def wait_left_ready(self, after: int, timeout_s: float = 10) -> None:
        """Until a state other than READY comes after the first `after` states."""
        with self.cond:
            assert self.cond.wait_for(
                lambda: any(s != grpc.ChannelConnectivity.READY for s in self.seen[after:]),
                timeout_s,
            ), f"the channel never saw its connection end: {self.seen}"


def _ours(source: BpfLatencySource, host: str, port: int) -> list[SocketState]:
    return [s for s in source.sockets() if s.role == "server" and s.local == (host, port)]


def quiet(executor: HandOffExecutor) -> Callable[[SocketState], bool]:
    """Idle for the executor's quiet time: its next step may end the connection."""
    return lambda s: is_quiet(s, time.monotonic_ns(), int(executor.quiet_s * 1e9))


def _wait(
    source: BpfLatencySource, host: str, port: int, ok: Callable[[SocketState], bool]
) -> None:
    """Until the one connection to (host, port) satisfies `ok` (the program updates it
    within the syscall that moved the bytes; bounded for a loaded machine)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        socks = _ours(source, host, port)
        if len(socks) == 1 and ok(socks[0]):
            return
        time.sleep(0.005)
    raise AssertionError(f"not reached: {_ours(source, host, port)}")


@pytest.mark.parametrize(
    ("host", "rpcs", "answer_during_watch"),
    [("127.0.43.1", 1, False), ("127.0.43.2", 8, False), ("127.0.43.3", 8, True)],
)
def test_grpc_rpcs_in_flight_complete_and_the_connection_ends_after(
    latency_source: BpfLatencySource,
    ending: DiagOpener,
    host: str,
    rpcs: int,
    answer_during_watch: bool,
) -> None:
    pod = Pod()
    with (
        pod.serve(host) as port,
        grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel,
    ):
        states = States(channel)
        call = channel.unary_unary(METHOD)
        first_peer = call(b"quick", timeout=10)
        assert pod.arrived.acquire(timeout=10)
        _wait(latency_source, host, port, is_idle)

        pod.hold.clear()
        slow = [call.future(b"slow", timeout=30) for _ in range(rpcs)]
        for _ in range(rpcs):
            assert pod.arrived.acquire(timeout=10)
        _wait(latency_source, host, port, lambda s: s.streams == rpcs)

        executor = HandOffExecutor(table=latency_source, open_diag=ending, fresh_s=0.0, watch_s=0.3)
        h = executor.begin(Target("ns/pod", host, frozenset({port})), "ns/policy", 0.0)
        before = len(states.seen)
        if answer_during_watch:
            # The answers go out while the step watches: the connection ends right after
            # the last one (the step polls every millisecond).
            executor.watch_s = 10.0
            threading.Timer(0.2, pod.hold.set).start()
            executor.step()
        else:
            executor.step()  # busy the whole watch: left alone
            assert h.ended == 0 and h.busy == 1 and h.active
            pod.hold.set()
        answers = [f.result(timeout=30) for f in slow]  # raises on any failed RPC
        assert answers == [first_peer] * rpcs  # all on the first connection
        if not answer_during_watch:
            _wait(latency_source, host, port, quiet(executor))
            executor.step()
        assert h.ended == 1

        # The channel saw its connection end and dials again for its next RPC (here to
        # the same server: no Service proxy in between).
        states.wait_left_ready(before)
        assert call(b"quick", timeout=10) != first_peer


def test_grpc_server_streaming_rpc_keeps_its_connection_until_its_last_message(
    latency_source: BpfLatencySource,
    ending: DiagOpener,
) -> None:
    """A server-streaming RPC is answered (its response HEADERS) long before it ends:
    hand-off steps run between its messages, each of which leaves the connection with
    no request open but the stream open. None ends the connection; every message
    arrives; once the trailers went out the next step ends it."""
    host, messages = "127.0.43.4", 40
    pod = Pod()
    with (
        pod.serve(host) as port,
        grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel,
    ):
        states = States(channel)
        first_peer = channel.unary_unary(METHOD)(b"quick", timeout=10)
        assert pod.arrived.acquire(timeout=10)
        _wait(latency_source, host, port, is_idle)

        executor = HandOffExecutor(
            table=latency_source, open_diag=ending, fresh_s=0.0, watch_s=0.02
        )
        got: list[bytes] = []
        stream = channel.unary_stream(STREAM_METHOD)(str(messages).encode(), timeout=30)
        h = None
        for i in range(messages):
            pod.permits.release()
            got.append(next(stream))  # UNAVAILABLE if the connection was ended under it
            if i == 0:
                # Answered, a message out, the rest to come: open for hand-off.
                _wait(latency_source, host, port, lambda s: s.requests >= 2)
                h = executor.begin(Target("ns/pod", host, frozenset({port})), "ns/policy", 0.0)
                before = len(states.seen)
            executor.step()
        assert h is not None and h.ended == 0 and h.busy == messages
        pod.permits.release()
        assert list(stream) == []  # the trailers: the RPC ended OK
        assert got == [f"{i}".encode() for i in range(messages)]

        _wait(latency_source, host, port, quiet(executor))
        executor.step()
        assert h is not None and h.ended == 1
        states.wait_left_ready(before)
        assert channel.unary_unary(METHOD)(b"quick", timeout=10) != first_peer


def test_grpc_stream_older_than_the_program_keeps_its_connection() -> None:
    """A server-streaming RPC already flowing when the program loads (an agent that
    started, or restarted, during it): the program never saw its HEADERS, yet its next
    messages make it an open stream of the connection (not timed), so hand-off steps
    between them leave the connection alone; its trailers close it."""
    require_bpf_privileges()
    host, messages = "127.0.43.5", 20
    pod = Pod()
    with (
        pod.serve(host) as port,
        grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel,
    ):
        stream = channel.unary_stream(STREAM_METHOD)(str(messages).encode(), timeout=60)
        pod.permits.release()
        got = [next(stream)]
        with BpfLatencySource.load() as source:  # the agent's map sizes (see conftest)
            executor = HandOffExecutor(table=source, open_diag=open_diag, fresh_s=0.0, watch_s=0.02)
            h = executor.begin(Target("ns/pod", host, frozenset({port})), "ns/policy", 0.0)
            for i in range(1, messages):
                pod.permits.release()
                got.append(next(stream))  # UNAVAILABLE if the connection was ended
                if i == 1:
                    _wait(source, host, port, lambda s: s.protocol is not None)
                    assert [(s.protocol, s.streams) for s in _ours(source, host, port)] == [
                        ("h2", 1)
                    ]
                executor.step()
            pod.permits.release()
            assert list(stream) == []
            assert got == [f"{i}".encode() for i in range(messages)]
            assert h.ended == 0
            _wait(source, host, port, quiet(executor))
            executor.step()
            assert h.ended == 1
