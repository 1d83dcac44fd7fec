"""Which connections of a pod may be handed off, and when one counts as idle (pure).

A hand-off ends the pod's *client* connections on the Service's target ports: the
sockets the pod accepted (server role) whose local address is the pod's IP and a
target port. Never:

- the pod's own outbound connections (client role, whatever their ports);
- connections from the node's own addresses (the kubelet's probes, the agent's
  keep-warm probes: they come from the node, and are short-lived anyway);
- a connection younger than `fresh_s` that has carried no request yet: its client
  has just dialled and is about to send its first request, which clients do not retry
  (a reused connection's request they do). Such a connection is not ended *yet*: it
  keeps its pod's hand-off going (`Connections.dialling`) until it can be;
- a connection whose bytes the program did not recognise (`opaque`): timed from first
  bytes in to first bytes out, it looks idle whenever any answer went out, which on a
  multiplexed connection (an HTTP/2 connection the program did not see start, TLS)
  says nothing about the requests still open on it;
- a connection with a request in flight (`is_idle` is false): checked here on a map
  walk and again right before each destroy.

`is_idle` is the one idle test: no request is open (HTTP/1.1: `start_ns == 0`) and no
HTTP/2 stream is open (`streams == 0`, counted per connection by the program: a stream
is open until END_STREAM went both ways or it was reset, so a response still streaming
keeps its connection).

`is_quiet` is the test for ending one: idle for at least a quiet time. An idle moment
alone is not enough: a client that sends its next request the moment an answer arrives
(a connection kept busy, a load tool behind its pace) is idle for the microseconds
between the answer and that request, and a connection ended then loses the request
already on its way, which a client that does not retry reports as a failure. A
connection idle for the quiet time belongs to a client that is not about to send; one
never quiet is left on its pod (HTTP/1.1 has no way for anyone but the server's own
response to say "close after this"; HTTP/2 connections get a graceful GOAWAY instead).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from aviator.agent.bpf.model import SocketState
from aviator.kube.addresses import normalize_ip

# The quiet time's default (`--handoff-quiet`): longer than a client takes from reading
# an answer to sending its next request, even descheduled on a busy node.
DEFAULT_QUIET_S = 0.05


@dataclass(frozen=True)
class Target:
    """A pod to hand off: `pod` is "namespace/name"; `ip` its address (normalised);
    `ports` the Service's target ports on it."""

    pod: str
    ip: str
    ports: frozenset[int]


def is_idle(sock: SocketState) -> bool:
    """No request (HTTP/1.1) and no HTTP/2 stream is open on the connection."""
    return sock.idle


def is_quiet(sock: SocketState, now_ns: int, quiet_ns: int) -> bool:
    """Idle, and since at least `quiet_ns` before `now_ns` (the kernel's monotonic clock;
    an HTTP/1.1 answer sent in parts is idle from its last send)."""
    return is_idle(sock) and now_ns - sock.idle_ns >= quiet_ns


class Connections(NamedTuple):
    """A pod's client connections as a hand-off sees them: `candidates` it may end
    (busy ones included: they are ended once idle), idle ones first, longest idle
    first; and how many are `dialling`: younger than the fresh time with no request
    carried yet, not to be ended yet but not gone either. A Service proxy that follows
    a routing change late (kube-proxy syncs its rules every second or so) still places
    new connections on a pod being handed off; they become candidates once their first
    request is answered or the fresh time has passed."""

    candidates: list[SocketState]
    dialling: int


def connections(
    sockets: Iterable[SocketState],
    target: Target,
    *,
    node_addresses: Collection[str],
    now_ns: int,
    fresh_s: float = 1.0,
) -> Connections:
    """`target`'s client connections on its target ports (see the module docstring)."""
    ip = normalize_ip(target.ip) or target.ip
    fresh_ns = int(fresh_s * 1e9)
    found: list[SocketState] = []
    dialling = 0
    for s in sockets:
        if (
            s.role != "server"
            or s.local[0] != ip
            or s.local[1] not in target.ports
            or s.remote[0] in node_addresses
            or s.protocol == "opaque"
        ):
            continue
        if s.requests == 0 and now_ns - s.idle_ns < fresh_ns:
            dialling += 1
        else:
            found.append(s)
    found.sort(key=lambda s: (not is_idle(s), s.idle_ns))
    return Connections(found, dialling)
