"""Measurement accuracy: per-pod p50/p99, request and error counts from the kernel (the
BPF reader the agent uses) against what the clients observed in the same run.

The "pods" are the test app (test/functional/testapp.py, the program box pods run) as
processes on their own loopback addresses, each with one latency profile. The BPF
program's server-role counters of each pod (histogram delta, `statuses`, `errors`,
`protocol`) are compared with the clients' truth (`bench/accuracy_clients.py` says
how each client times a request): the relative error of p50 and p99 (bucket
midpoints against the exact nearest-rank quantile; goal 3.2 %), the share of requests
and of errors the kernel counted (goal: exactly 1), and whether it recognised the
protocol.

Two parts:
- profiles (127.0.40.x): HTTP/1.1, four keep-alive connections per pod, fixed and
  lognormal latencies, timed with kernel stamps (SO_TIMESTAMPING);
- the protocol matrix (127.0.41.x): HTTP/1.1, h2c and gRPC at 1, 10 and 100
  concurrent streams (HTTP/1.1: connections) per pod, lognormal latencies (median
  10 ms, 50 ms, 400 ms: about the same request rate at every width), 5 % of requests
  answered at once with 503 / UNAVAILABLE; plus grpcio's own client and h2load
  (nghttp2) at 10 streams. h2c and gRPC streams share ONE connection per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aviator.latency.histogram import Histogram, quantile_rank
from aviator.testing.ports import free_port
from bench.accuracy_clients import (
    Truth,
    drive_grpcio,
    drive_h2,
    drive_h2load,
    drive_http1,
    h2load_available,
)
from bench.common import REPO, Row, row

if TYPE_CHECKING:
    from aviator.agent.bpf import EndpointCounters, EndpointKey

    Counters = dict[EndpointKey, EndpointCounters]

NAME = "accuracy"
TESTAPP = REPO / "test" / "functional" / "testapp.py"
CONNECTIONS = 4
GOAL = "<= 3.2 %"
EXACT = "= 1 (exact)"
ERROR_RATE = "0.05"
MEDIAN = {1: "10ms", 10: "50ms", 100: "400ms"}
# What the agent should call each app protocol (latency/schema.py's AppProtocol).
AGENT_PROTOCOL = {"http1": "http1", "h2c": "h2", "grpc": "grpc"}


@dataclass(frozen=True)
class Profile:
    label: str
    ip: str
    env: dict[str, str]


PROFILES = [
    Profile("fixed 10ms", "127.0.40.1", {"LATENCY": "10ms", "MODE": "fixed"}),
    Profile("fixed 100ms", "127.0.40.2", {"LATENCY": "100ms", "MODE": "fixed"}),
    Profile(
        "lognormal 10ms s=0.5",
        "127.0.40.3",
        {"LATENCY": "10ms", "MODE": "lognormal", "SIGMA": "0.5"},
    ),
    Profile(
        "lognormal 20ms s=1.0",
        "127.0.40.4",
        {"LATENCY": "20ms", "MODE": "lognormal", "SIGMA": "1.0"},
    ),
]


@dataclass(frozen=True)
class Cell:
    """One pod of the protocol matrix: the app's protocol, the client that drives it
    ("http1", "h2", "grpc-frames", "grpcio", "h2load") and the streams per connection."""

    protocol: str
    client: str
    streams: int
    ip: str

    @property
    def label(self) -> str:
        extra = f" via {self.client}" if self.client in ("grpcio", "h2load") else ""
        unit = "connections" if self.protocol == "http1" else "streams"
        return f"{self.protocol} {self.streams} {unit}{extra}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "PROTOCOL": self.protocol,
            "LATENCY": MEDIAN[self.streams],
            "MODE": "lognormal",
            "SIGMA": "0.5",
            "ERROR_RATE": ERROR_RATE,
        }


def _cells() -> list[Cell]:
    clients = {"http1": "http1", "h2c": "h2", "grpc": "grpc-frames"}
    cells = [
        Cell(protocol, client, streams, "")
        for protocol, client in clients.items()
        for streams in (1, 10, 100)
    ]
    cells += [Cell("grpc", "grpcio", 10, ""), Cell("h2c", "h2load", 10, "")]
    return [Cell(c.protocol, c.client, c.streams, f"127.0.41.{i + 1}") for i, c in enumerate(cells)]


CELLS = _cells()


def _requests(streams: int, quick: bool) -> int:
    return (
        {1: 150, 10: 300, 100: 300}[streams] if quick else {1: 1000, 10: 2000, 100: 2000}[streams]
    )


def _start_app(label: str, ip: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "PORT": str(port), "LISTEN_ADDR": ip, "POD_NAME": label}
    proc = subprocess.Popen(
        [sys.executable, str(TESTAPP)],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((ip, port), 0.5):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"test app {label} exited with {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"test app {label} did not listen")


async def _drive_cell(cell: Cell, port: int, requests: int, duration_s: float) -> list[Truth]:
    if cell.client == "http1":
        return await asyncio.to_thread(
            drive_http1, cell.ip, port, cell.streams, requests, duration_s
        )
    if cell.client == "h2load":
        return await asyncio.to_thread(
            drive_h2load, cell.ip, port, cell.streams, requests, duration_s
        )
    if cell.client == "grpcio":
        return await drive_grpcio(cell.ip, port, cell.streams, requests, duration_s)
    return await drive_h2(
        cell.ip, port, cell.streams, requests, duration_s, grpc=cell.client == "grpc-frames"
    )


async def _drive_matrix(
    cells: list[Cell], ports: dict[str, int], quick: bool
) -> dict[str, list[Truth]]:
    """One cell after the other: the pods do not compete for the machine's cores."""
    out: dict[str, list[Truth]] = {}
    for cell in cells:
        duration = 30.0 if quick else 90.0
        out[cell.label] = await _drive_cell(
            cell, ports[cell.label], _requests(cell.streams, quick), duration
        )
    return out


def _exact(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[quantile_rank(q, len(ordered)) - 1]


@dataclass(frozen=True)
class Seen:
    """What the kernel counted for one pod between the two reads."""

    hist: Histogram
    statuses: int
    errors: int
    protocol: str


def _seen(before: Counters, after: Counters, key: EndpointKey) -> Seen | None:
    new, old = after.get(key), before.get(key)
    if new is None:
        return None
    hist = Histogram(new.buckets)
    statuses, errors = new.statuses, new.errors
    if old is not None:
        hist = hist.delta(Histogram(old.buckets))
        statuses -= old.statuses
        errors -= old.errors
    return Seen(hist, statuses, errors, new.protocol)


def _quantile_rows(
    label: str, seen: Seen, truth: list[Truth], what: str, *, goal: str | None = GOAL
) -> list[Row]:
    rows: list[Row] = []
    client_us = [t.latency_us for t in truth if not math.isnan(t.latency_us)]
    app_us = [t.app_us for t in truth if not math.isnan(t.app_us)]
    if not client_us:
        return rows
    for q, qname in ((0.5, "p50"), (0.99, "p99")):
        measured = seen.hist.quantile(q) or 0.0
        client = _exact(client_us, q)
        err = 100 * abs(measured - client) / client
        note = f"BPF {measured / 1000:.2f} ms, client {client / 1000:.2f} ms"
        if app_us:
            note += f", client (app clock) {_exact(app_us, q) / 1000:.2f} ms"
        rows.append(row(NAME, f"{label}: {qname} error vs {what}", err, "%", goal=goal, note=note))
    return rows


def _profile_rows(
    before: Counters,
    after: Counters,
    ports: dict[str, int],
    results: dict[str, list[Truth]],
) -> list[Row]:
    from aviator.agent.bpf import EndpointKey

    rows: list[Row] = []
    worst = 0.0
    for p in PROFILES:
        truth = results[p.label]
        seen = _seen(before, after, EndpointKey(p.ip, ports[p.label], "server"))
        if seen is None:
            rows.append(row(NAME, f"{p.label}: kernel saw no requests", 0.0, "", note=p.ip))
            continue
        errors = _quantile_rows(p.label, seen, truth, "kernel-timed client")
        worst = max([worst, *(float(str(r["value"])) for r in errors)])
        rows += errors
        n = len(truth)
        rows.append(
            row(
                NAME,
                f"{p.label}: requests counted by the kernel",
                seen.hist.count / n if n else 0.0,
                "x",
                ratio=seen.hist.count / n if n else 0.0,
                note=f"{seen.hist.count} of {n} (server role, {p.ip}:{ports[p.label]})",
            )
        )
    rows.append(row(NAME, "worst p50/p99 error vs kernel-timed client", worst, "%", goal=GOAL))
    return rows


def _count_row(label: str, what: str, counted: int, truth: int, note: str) -> Row:
    share = counted / truth if truth else (1.0 if counted == 0 else math.inf)
    return row(
        NAME,
        f"{label}: {what} counted by the agent",
        share,
        "x",
        ratio=share,
        goal=EXACT,
        note=f"{counted} of {truth}; {note}",
    )


def _matrix_rows(
    cells: list[Cell],
    before: Counters,
    after: Counters,
    ports: dict[str, int],
    results: dict[str, list[Truth]],
) -> list[Row]:
    from aviator.agent.bpf import EndpointKey

    rows: list[Row] = []
    worst = 0.0
    exact = 0
    for cell in cells:
        truth = results[cell.label]
        seen = _seen(before, after, EndpointKey(cell.ip, ports[cell.label], "server"))
        if seen is None:
            rows.append(row(NAME, f"{cell.label}: agent saw no requests", 0.0, "", note=cell.ip))
            continue
        if cell.client == "grpcio":
            # grpcio times an RPC with its own clock, in the client process: its
            # figures add the client's own overhead (a real client's view, shown),
            # not a kernel-timed truth for the accuracy goal.
            quantiles = _quantile_rows(
                cell.label, seen, truth, "grpcio's own clock (with its overhead)", goal=None
            )
        else:
            quantiles = _quantile_rows(cell.label, seen, truth, "client")
            worst = max([worst, *(float(str(r["value"])) for r in quantiles)])
        rows += quantiles
        client_errors = sum(t.error for t in truth)
        where = f"{cell.ip}:{ports[cell.label]}, agent protocol {seen.protocol}"
        rows.append(_count_row(cell.label, "requests", seen.hist.count, len(truth), where))
        rows.append(
            _count_row(
                cell.label,
                "errors",
                seen.errors,
                client_errors,
                f"statuses read {seen.statuses}",
            )
        )
        recognised = seen.protocol == AGENT_PROTOCOL[cell.protocol]
        rows.append(
            row(
                NAME,
                f"{cell.label}: protocol recognised by the agent",
                1.0 if recognised else 0.0,
                "bool",
                goal="1",
                note=f"agent: {seen.protocol}, expected {AGENT_PROTOCOL[cell.protocol]}",
            )
        )
        exact += seen.hist.count == len(truth) and seen.errors == client_errors
    rows.append(
        row(
            NAME,
            "protocol matrix: worst p50/p99 error vs client",
            worst,
            "%",
            goal=GOAL,
            note="cells timed by kernel stamps (all but grpcio's own)",
        )
    )
    rows.append(
        row(
            NAME,
            "protocol matrix: pods with exact request and error counts",
            float(exact),
            "pods",
            goal=f"{len(cells)}",
        )
    )
    return rows


def run(quick: bool) -> list[Row]:
    from aviator.agent.bpf import BpfLatencySource, BpfUnavailable

    requests_each = 60 if quick else 750  # per connection; 4 connections per profile pod
    try:
        source = BpfLatencySource.load()  # the agent's map sizes: a busy machine fills small ones
    except BpfUnavailable as exc:
        return [row(NAME, "skipped", 0.0, "", note=f"BPF unavailable: {exc.reason}")]
    cells = [c for c in CELLS if c.client != "h2load" or h2load_available()]
    apps: list[subprocess.Popen[bytes]] = []
    profile_results: dict[str, list[Truth]] = {}
    try:
        # Free ports, so that nothing else on this host talks to our apps by accident.
        ports = {p.label: free_port(p.ip) for p in PROFILES}
        ports |= {c.label: free_port(c.ip) for c in cells}
        apps = [_start_app(p.label, p.ip, ports[p.label], p.env) for p in PROFILES]
        apps += [_start_app(c.label, c.ip, ports[c.label], c.env) for c in cells]
        before = source.read()
        threads = [
            threading.Thread(
                target=lambda p=p: profile_results.__setitem__(
                    p.label,
                    drive_http1(
                        p.ip, ports[p.label], CONNECTIONS, CONNECTIONS * requests_each, 600
                    ),
                )
            )
            for p in PROFILES
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        matrix_results = asyncio.run(_drive_matrix(cells, ports, quick))
        time.sleep(0.2)  # the last responses' send events are in the maps
        after = source.read()
    finally:
        for app in apps:
            app.kill()
            app.wait(5)
        source.close()
    rows = _profile_rows(before, after, ports, profile_results)
    if len(cells) < len(CELLS):
        rows.append(row(NAME, "h2load pod skipped", 0.0, "", note="h2load is not installed"))
    rows += _matrix_rows(cells, before, after, ports, matrix_results)
    return rows
