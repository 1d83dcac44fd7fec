"""gRPC channels and connection hand-off, in the cluster in a box.

bench/handoff_bench.py with the test app in gRPC mode (PROTOCOL=grpc) and a real gRPC
client: 16 long-lived grpcio channels (default pick_first, one HTTP/2 connection
each, placed by the box proxy like kube-proxy places a connection), open-loop unary
RPCs spread over them, many in flight on each (a slow pod's connection always holds
2 to 3 open streams). A channel keeps its pod until its connection ends: with hand-off
on, the agent ends a slow pod's connection when no stream is open on it, or, never
finding such a moment, drains it with a graceful GOAWAY (the channel finishes its RPCs
on it), and grpcio dials again on the next RPC (through the proxy, onto a routed pod);
an RPC cut mid-flight would fail UNAVAILABLE, so every failed RPC counts. The agents'
Events in the note say how many connections were ended and how many drained. Same variants, window and goals as the keep-alive rows; the note counts the
channels that moved to another pod (a re-dial).
"""

from __future__ import annotations

import itertools

from aviator.testing.grpcclient import Channels
from bench.common import Row
from bench.handoff_bench import Bench, Client, Load, Timed, measure

NAME = "handoff-grpc"
NS = "bench-handoff-grpc"
CHANNELS = 16


def run(quick: bool) -> list[Row]:
    load = Load(60, 4, 16) if quick else Load(80, 10, 40)
    return measure(
        Bench(NAME, NS, "grpc", f"{CHANNELS} grpcio channels (pick_first)", "RPCs"),
        _channels,
        load,
    )


class _Channels:
    def __init__(self, channels: Channels) -> None:
        self.channels = channels

    async def run(self, rate_per_s: float, duration_s: float, seed: int) -> list[Timed]:
        made = await self.channels.run(rate_per_s, duration_s, seed)
        return [
            Timed(
                s.sent_ns / 1e9,
                s.latency_s,
                s.ok,
                s.served_by,
                None if s.ok else f"{s.code} ({s.details})",
            )
            for _, s in made
        ]

    async def close(self) -> None:
        await self.channels.close()

    def redials(self, policy_at: float) -> str:
        """Pod changes of each channel (in the order its RPCs were made), and how many
        channels a slow pod served when the policy came and at the end."""
        moves = slow_then = slow_end = 0
        for samples in self.channels.samples:
            made = sorted((s for s in samples if s.served_by), key=lambda s: s.sent_ns)
            pods = [s.served_by for s in made]
            moves += sum(1 for a, b in itertools.pairwise(pods) if a != b)
            before = [s.served_by for s in made if s.sent_ns / 1e9 < policy_at]
            slow_then += bool(before) and str(before[-1]).startswith("slow-")
            slow_end += bool(pods) and str(pods[-1]).startswith("slow-")
        return (
            f"{moves} channel moves to another pod (re-dials); channels on slow pods: "
            f"{slow_then} at the policy, {slow_end} at the end"
        )


async def _channels(address: tuple[str, int], netns: str | None) -> Client:
    if netns is not None:
        raise ValueError("the gRPC channels connect from the host's network namespace only")
    host, port = address
    channels = Channels(f"{host}:{port}", CHANNELS)
    await channels.connect()
    return _Channels(channels)
