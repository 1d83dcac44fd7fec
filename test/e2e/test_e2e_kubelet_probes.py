"""The kubelet's probes are not traffic: in the box (whose kubelet-like prober sends
the quick-start's readiness probes, GET /healthz every second, from the node's
address), each pod's row reports its real path's latency, and the probes apart.

The reference is the same requests the row is built from: every HTTP/1.1 request to
the pods' port, captured on the box network's loopback device with the kernel's
receive stamps (the request's first segment, the response's first segment: within
microseconds of what the program sees on the pod's socket), split by path into the
kubelet's probes (GET /healthz) and everything else (keep-warm probes, traffic). A
row is the evaluation at the status's `lastEvaluationTime` (whole seconds; the status
is written only when something moved, so a row may be older than the read), over the
controller's window of whole agent reports. The controller files a report when it
arrives, so the window's newest request was answered up to a report, plus however late
the agent read and sent it, before the evaluation: on a busy machine a second or more.
So the reference for a row's quantiles is every run of as many consecutive requests
(by answer time) as the row counts that ends with the last request answered before a
cut from LATE_S before the evaluation to a report after it; for its counts, every time
window of WINDOW_S give or take a report ending then. The row's figures must lie within the histogram's error
of that range, its counts within it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import subprocess
import sys
import time
from typing import Any

import pytest
from e2e_cluster import BoxCluster
from e2e_scenario import TARGET, Scenario, wait_for

from aviator.latency.histogram import quantile_rank

pytestmark = pytest.mark.e2e

WITHIN = 0.032  # the histogram's relative error at a bucket's midpoint (1/32)
PERIOD_S = 1  # the quick-start's readinessProbe.periodSeconds
WINDOW_S = 10  # the controller's latency window (--latency-window, default)
REPORT_S = 1  # the agents' report interval: a window holds whole reports
LATE_S = 4 * REPORT_S  # how long before an evaluation the cut of its newest report may be
PORT = 8080
PROBE_PATH = "/healthz"

# Runs in the box's network namespace: captures every TCP segment to or from PORT on
# its loopback (a classic BPF filter: IPv4, TCP, either port PORT), with the kernel's
# receive stamp, until stdin closes (or MAX_S); then prints, per request, [pod IP,
# client IP, path, realtime seconds of the response's first segment, latency ms] (the
# request's first segment -> the response's first segment on the same connection).
_CAPTURE = """
import json, select, socket, struct, sys, time
PORT, MAX_S = int(sys.argv[1]), float(sys.argv[2])
F = [(0x30, 0, 0, 9), (0x15, 0, 6, 6), (0xb1, 0, 0, 0), (0x48, 0, 0, 0),
     (0x15, 2, 0, PORT), (0x48, 0, 0, 2), (0x15, 0, 1, PORT), (0x06, 0, 0, 0xffff),
     (0x06, 0, 0, 0)]
code = b"".join(struct.pack("HBBI", *f) for f in F)
buf = __import__("ctypes").create_string_buffer(code)
prog = struct.pack("HL", len(F), __import__("ctypes").addressof(buf))
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.setsockopt(socket.SOL_SOCKET, 26, prog)  # SO_ATTACH_FILTER
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.bind(("lo", 0))
print("capturing", flush=True)
open_, out, end = {}, [], time.monotonic() + MAX_S
while time.monotonic() < end:
    ready, _, _ = select.select([s, sys.stdin], [], [], 1.0)
    if sys.stdin in ready and not sys.stdin.readline():
        break
    if s not in ready:
        continue
    while True:
        try:
            data, anc, _, addr = s.recvmsg(65536, 1024, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if addr[2] == 4:  # PACKET_OUTGOING: loopback shows each segment twice
            continue
        ts = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == 35:
                sec, nsec = struct.unpack("qq", payload[:16])
                ts = sec + nsec / 1e9
        ihl = (data[0] & 15) * 4
        src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
        sport, dport = struct.unpack("!HH", data[ihl:ihl + 4])
        body = data[ihl + (data[ihl + 12] >> 4) * 4:struct.unpack("!H", data[2:4])[0]]
        if not body or ts is None:
            continue
        if dport == PORT:
            key = (src, sport, dst)
            if key not in open_ and body.split(b" ", 1)[0] in (b"GET", b"POST", b"HEAD"):
                parts = body.split(b" ", 2)
                path = parts[1].decode("latin-1") if len(parts) > 2 else ""
                open_[key] = (ts, path)
        else:
            key = (dst, dport, src)
            if key in open_:
                start, path = open_.pop(key)
                out.append([src, dst, path, ts, (ts - start) * 1e3])
print(json.dumps(out), flush=True)
"""


class Capture:
    """The capture above, running in the box's network namespace."""

    def __init__(self, box: BoxCluster, max_s: float = 600) -> None:
        argv = ["nsenter", f"--net=/proc/{box.status()['pid']}/ns/net", sys.executable]
        self.proc = subprocess.Popen(
            [*argv, "-c", _CAPTURE, str(PORT), str(max_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "capturing"
        self.started = time.time()

    def stop(self) -> list[tuple[str, str, str, float, float]]:
        """Every request seen: (pod IP, client IP, path, answered at, latency ms)."""
        out, _ = self.proc.communicate("", timeout=60)
        return [(str(p), str(c), str(u), float(t), float(ms)) for p, c, u, t, ms in json.loads(out)]


def nearest_rank(values: list[float], q: float) -> float:
    """The nearest-rank quantile, the rank the histogram reports."""
    return sorted(values)[quantile_rank(q, len(values)) - 1]


class Span:
    """The range of a figure over the windows a row may have been computed from."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def add(self, value: float) -> None:
        self.lo, self.hi = min(self.lo, value), max(self.hi, value)

    def holds(self, value: float, rel: float = 0.0) -> bool:
        return self.lo * (1 - rel) <= value <= self.hi * (1 + rel)

    def __str__(self) -> str:
        return f"{self.lo:.3f}..{self.hi:.3f}" if self.lo <= self.hi else "-"


def evaluated_at(policy: dict[str, Any] | None) -> float:
    """The status's lastEvaluationTime (seconds since the epoch; 0: none)."""
    text = ((policy or {}).get("status") or {}).get("lastEvaluationTime")
    if not text:
        return 0.0
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def reference(
    requests: list[tuple[str, str, str, float, float]], ip: str, evaluated: float, samples: int
) -> dict[str, Span]:
    """Over every window the row evaluated at `evaluated` (whole seconds) may be: the
    p50/p99 of each run of `samples` consecutive requests (not probes), the requests'
    and the probes' counts in each time window."""
    mine = sorted((r for r in requests if r[0] == ip), key=lambda r: r[3])
    real = [r for r in mine if r[2] != PROBE_PATH]
    spans = {k: Span() for k in ("p50", "p99", "samples", "probes")}
    # The evaluation ran within the second after `evaluated`.
    first, last = evaluated - LATE_S, evaluated + REPORT_S
    for tenths in range(-10 * LATE_S, 10 * REPORT_S + 1):
        end = evaluated + tenths / 10
        for length in (WINDOW_S - REPORT_S, WINDOW_S, WINDOW_S + REPORT_S):
            inside = [r for r in mine if end - length < r[3] <= end]
            spans["samples"].add(sum(r[2] != PROBE_PATH for r in inside))
            spans["probes"].add(sum(r[2] == PROBE_PATH for r in inside))
    # The window's newest request is the last one answered before the cut of its newest
    # report, anywhere from `first` to `last`.
    answered = [r[3] for r in real]
    newest_from = bisect.bisect_right(answered, first) - 1
    newest_to = bisect.bisect_right(answered, last) - 1
    for newest in range(max(newest_from, samples - 1), newest_to + 1):
        run = [r[4] for r in real[newest - samples + 1 : newest + 1]]
        if run:
            spans["p50"].add(nearest_rank(run, 0.5))
            spans["p99"].add(nearest_rank(run, 0.99))
    return spans


def timeline(requests: list[tuple[str, str, str, float, float]], ip: str, evaluated: float) -> str:
    """The requests (not probes) to `ip` answered in the windows before `evaluated`:
    seconds relative to it and latency, for a failure's report."""
    seen = sorted(
        (r[3] - evaluated, r[4])
        for r in requests
        if r[0] == ip and r[2] != PROBE_PATH and -WINDOW_S - 2 * LATE_S < r[3] - evaluated <= 2
    )
    if len(seen) > 40:
        return f"  {len(seen)} requests"
    return "  " + " ".join(f"{t:+.2f}s:{ms:.2f}" for t, ms in seen)


def rows(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(((policy or {}).get("status") or {}).get("pods") or [])


def table(pods: list[dict[str, Any]], refs: dict[str, dict[str, Span]]) -> str:
    lines = [
        "pod  samples (same requests)  keepwarm  probes (captured)  p50 (same requests)  "
        "p99 (same requests)  probe p50 p99"
    ]
    for r in pods:
        ref = refs[r["ip"]]
        lines.append(
            f"{r['name']}  {r.get('samples')} ({ref['samples']})  {r.get('keepWarmSamples')}  "
            f"{r.get('probeSamples')} ({ref['probes']})  {r.get('p50Ms')} ({ref['p50']})  "
            f"{r.get('p99Ms')} ({ref['p99']})  {r.get('probeP50Ms')} {r.get('probeP99Ms')}"
        )
    return "\n".join(lines)


def check_rows(
    policy: dict[str, Any] | None, requests: list[tuple[str, str, str, float, float]]
) -> None:
    """Each row: its p50 and p99 within the histogram's error of the same requests',
    as many samples as those requests, the probes apart (as many as were sent, about one
    a period) and faster."""
    pods, evaluated = rows(policy), evaluated_at(policy)
    refs = {r["ip"]: reference(requests, r["ip"], evaluated, r["samples"]) for r in pods}
    report = "\n".join(
        [table(pods, refs)]
        + [f"{r['name']}\n{timeline(requests, r['ip'], evaluated)}" for r in pods]
    )
    print(report)
    for r in pods:
        ref = refs[r["ip"]]
        assert ref["samples"].holds(r["samples"]), report
        assert ref["p50"].holds(r["p50Ms"], WITHIN), report
        assert ref["p99"].holds(r["p99Ms"], WITHIN), report
        assert ref["probes"].holds(r["probeSamples"]), report
        assert abs(r["probeSamples"] - WINDOW_S // PERIOD_S) <= 2, report
        assert r["probeP50Ms"] is not None and r["probeP50Ms"] < r["p50Ms"] / 2, report


def settled(expect_traffic: bool, since: float) -> Any:
    """Four rows with a window of probes, built from traffic (none: keep-warm only),
    evaluated once the capture had seen every window the rows may be."""

    def ok(policy: dict[str, Any] | None) -> bool:
        pods = rows(policy)
        return (
            evaluated_at(policy) >= since + WINDOW_S + 3 * REPORT_S
            and len(pods) == 4
            and all(
                r.get("p50Ms") is not None
                and r.get("probeSamples") is not None
                and abs(r["probeSamples"] - WINDOW_S // PERIOD_S) <= 2
                and (
                    r["samples"] > r["keepWarmSamples"]
                    if expect_traffic
                    else r["samples"] == r["keepWarmSamples"] > 0
                )
                for r in pods
            )
        )

    return ok


async def test_idle_pods_report_their_real_path_and_the_probes_apart(
    quickstart: Scenario,
) -> None:
    box = quickstart.cluster
    if not isinstance(box, BoxCluster):
        pytest.skip("captures the requests inside the box's network")

    capture = Capture(box)
    try:
        quickstart.apply(quickstart.policy())
        # No client traffic: the samples are the agent's keep-warm probes only.
        idle, _ = await wait_for(
            "every pod row built from keep-warm samples, with a window of probes",
            quickstart.avp,
            settled(expect_traffic=False, since=capture.started),
            timeout_s=120,
            poll_s=1.0,
        )
        # With client traffic over all four pods: traffic joins, the probes stay apart.
        quickstart.load(TARGET, concurrency=4)
        loaded = time.time()
        busy, _ = await wait_for(
            "every pod row with traffic in it",
            quickstart.avp,
            settled(expect_traffic=True, since=loaded),
            timeout_s=120,
            poll_s=1.0,
        )
    finally:
        requests = capture.stop()
    check_rows(idle, requests)
    check_rows(busy, requests)
