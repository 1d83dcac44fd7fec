"""wrk's kept-alive connections and connection hand-off, in the cluster in a box.

bench/handoff_bench.py with a load tool nobody here wrote: Debian's `wrk` (HTTP/1.1,
keep-alive, re-dials a connection the server closed), through the real kube-proxy: a
box of its own (`--proxy kube-proxy`), wrk run in its network namespace (nsenter) to
the Services' ClusterIPs, so each connection is kernel NAT to a pod as in a cluster
(a userspace relay would hold a request it already read while the agent ends the pod
side; docs/benchmarks.md). `wrk -t 16 -c 16`: each thread owns exactly one
connection, placed by kube-proxy, for the whole run. A Lua script paces each connection at rate/16 requests per second (wrk's
`delay()` hook; a request is never sent before the previous answer, and a connection
that fell behind sends the next at once rather than in a burst, so a slow pod's
connection keeps sending at the pace the pod allows) and, with LuaJIT's ffi, reads
CLOCK_MONOTONIC (Python's time.monotonic()) when each request is sent and its response
ends. Each request carries an `X-Request-Id` the test app echoes, and the thread's own
file gets a line when a request is sent and one when a response ends, naming it: a
response is paired with its request by that name, never by order, because wrk can put
two requests on one connection (a connection re-dialled while its `delay()` timer was
pending writes from the timer and from the new connection's first writable event):
the second is pipelined, and if that connection lands on a slow pod (kube-proxy not
yet following the slices) a hand-off may end it once the first is answered, as the
program sees the two as one request (docs/agent.md); such a failure is counted apart.
A request that got no response while a later one on the same connection did is a
failed request (its connection ended under it: wrk never re-sends), as is a status
other than 2xx; one still unanswered when wrk stopped is no sample. wrk's summary
(socket errors, non-2xx) is in the note. wrk counts an idle connection the server
closed as a read error, though no request was lost on it: with hand-off on, read
errors are the connections handed off.
Same variants, window and goals as the keep-alive pool rows.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import tempfile
from pathlib import Path

from bench.common import Row, row
from bench.handoff_bench import Bench, Client, Load, Timed, measure

NAME = "handoff-wrk"
NS = "bench-handoff-wrk"
CONNECTIONS = 16
TIMEOUT_S = 10

SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } aviator_timespec;
int clock_gettime(int clk_id, aviator_timespec *tp);
]]
local ts = ffi.new("aviator_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

local out, next_due, pacing
local sent = 0
function init(args)
  out = io.open(OUT_DIR .. "/thread-" .. id .. ".log", "w")
  out:setvbuf("line") -- wrk ends without closing the threads' files
  -- Connections start spread over one interval, not all at once.
  next_due = now() + INTERVAL_S * id / CONNECTIONS
end

function delay()
  pacing = true
  return math.max(0, math.floor((next_due - now()) * 1000))
end

function request()
  -- wrk calls request() once on thread 0 before the run to check the script (before
  -- any delay()): that one is never sent.
  if not pacing then
    return wrk.format("GET", "/")
  end
  local t = now()
  sent = sent + 1
  local name = string.format("%d-%d", id, sent)
  out:write(string.format("sent %s %.6f\n", name, t))
  next_due = math.max(next_due + INTERVAL_S, t)
  return wrk.format("GET", "/", { ["X-Request-Id"] = name })
end

function response(status, headers, body)
  local t = now()
  local name = headers["X-Request-Id"] or headers["x-request-id"] or "-"
  local pod = headers["X-Served-By"] or headers["x-served-by"] or "-"
  out:write(string.format("done %s %.6f %d %s\n", name, t, status, pod))
end
"""


def run(quick: bool) -> list[Row]:
    if shutil.which("wrk") is None:
        return [row(NAME, "skipped", 0.0, "", note="wrk is not installed (make setup)")]
    if shutil.which("nsenter") is None:
        return [row(NAME, "skipped", 0.0, "", note="nsenter is missing (util-linux)")]
    # 1.5 requests/s per connection: a slow pod's connection pauses between its 500 ms
    # answers, as a pool's connections do; one that never pauses (a connection sending
    # back to back) stays on its pod by design (docs/controller.md, the quiet time).
    load = Load(24, 4, 16) if quick else Load(24, 10, 40)
    return measure(
        Bench(
            NAME,
            NS,
            "http1",
            f"wrk, {CONNECTIONS} threads x 1 connection, through kube-proxy",
            "requests",
            kube_proxy=True,
        ),
        _wrk,
        load,
    )


def parse_thread_log(text: str) -> dict[str, Timed]:
    """One thread's lines, `sent <name> <at>` and `done <name> <at> <status> <pod>`, as
    samples by request name, in the order sent. Unanswered requests sent before the
    thread's last answered one are failed; later ones were in flight when wrk stopped
    and are no sample."""
    sent: dict[str, float] = {}
    done: dict[str, tuple[float, int, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "sent":
            sent[parts[1]] = float(parts[2])
        elif len(parts) == 5 and parts[0] == "done":
            if parts[1] not in sent:
                raise ValueError(
                    f"a response names no request this thread sent ({line!r}): "
                    "the server must echo X-Request-Id"
                )
            done[parts[1]] = (float(parts[2]), int(parts[3]), parts[4])
    last_answered = max((sent[name] for name in done), default=float("-inf"))
    # Pipelined: sent before the previous request's answer came, so on the same
    # connection (one answered later was not on a connection that had ended).
    pipelined = {
        name
        for prev, name in itertools.pairwise(sent)
        if prev in done and done[prev][0] > sent[name]
    }
    samples: dict[str, Timed] = {}
    for name, at in sent.items():
        if name in done:
            ended, status, pod = done[name]
            ok = 200 <= status < 300
            served_by = None if pod == "-" else pod
            error = None if ok else f"HTTP {status}"
            samples[name] = Timed(at, ended - at, ok, served_by, error, name in pipelined)
        elif at < last_answered:
            samples[name] = Timed(at, None, False, None, "connection ended", name in pipelined)
    return samples


_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def summarize(stdout: str) -> str:
    """wrk's error counts from its summary (it prints none when there were none)."""
    said = []
    errors = _SOCKET_ERRORS.search(stdout)
    if errors:
        connect, read, write, timeout = errors.groups()
        said.append(
            f"socket errors connect {connect}, read {read}, write {write}, timeout {timeout}"
        )
    non_2xx = _NON_2XX.search(stdout)
    if non_2xx:
        said.append(f"{non_2xx.group(1)} non-2xx/3xx")
    return ", ".join(said) or "no socket errors"


class _Wrk:
    def __init__(self, address: tuple[str, int], netns: str | None) -> None:
        host, port = address
        self.netns = netns
        self.url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        self.dir = Path(tempfile.mkdtemp(prefix="handoff-wrk-"))
        self.threads: list[dict[str, Timed]] = []  # the last run's samples, per thread
        self.summary = ""

    async def run(self, rate_per_s: float, duration_s: float, seed: int) -> list[Timed]:
        out = self.dir / f"run-{seed}"
        out.mkdir()
        script = out / "pace.lua"
        interval_s = CONNECTIONS / rate_per_s
        script.write_text(
            f'OUT_DIR = "{out}"\nINTERVAL_S = {interval_s!r}\nCONNECTIONS = {CONNECTIONS}\n'
            + SCRIPT
        )
        in_netns = [] if self.netns is None else ["nsenter", f"--net={self.netns}"]
        proc = await asyncio.create_subprocess_exec(
            *in_netns,
            "wrk",
            "-t",
            str(CONNECTIONS),
            "-c",
            str(CONNECTIONS),
            "-d",
            f"{max(1, round(duration_s))}s",
            "--timeout",
            f"{TIMEOUT_S}s",
            "-s",
            str(script),
            self.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stdout, _ = await proc.communicate()
        text = stdout.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"wrk exited with {proc.returncode}: {text[-2000:]}")
        self.summary = summarize(text)
        self.threads = [parse_thread_log(p.read_text()) for p in sorted(out.glob("thread-*.log"))]
        return [s for samples in self.threads for s in samples.values()]

    async def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def redials(self, policy_at: float) -> str:
        """Pod changes of each connection (a re-dial that moved it), how many a slow pod
        served when the policy came and at the end, and wrk's own error counts."""
        moves = slow_then = slow_end = 0
        for samples in self.threads:
            pods = [s.served_by for s in samples.values() if s.served_by]
            moves += sum(1 for a, b in itertools.pairwise(pods) if a != b)
            before = [s.served_by for s in samples.values() if s.served_by and s.at < policy_at]
            slow_then += bool(before) and str(before[-1]).startswith("slow-")
            slow_end += bool(pods) and str(pods[-1]).startswith("slow-")
        return (
            f"{moves} connection moves to another pod (re-dials); connections on slow pods: "
            f"{slow_then} at the policy, {slow_end} at the end; wrk: {self.summary}"
        )


async def _wrk(address: tuple[str, int], netns: str | None) -> Client:
    return _Wrk(address, netns)
