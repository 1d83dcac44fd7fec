"""The controller's in-memory latency store: a sliding window of histograms per endpoint.

Two feeds write histogram DELTAS into it:

- agents (`ingest`): one snapshot per report interval holding each endpoint's delta
  for that interval, measured by eBPF or, where eBPF cannot run, by the agent's own
  probes (the snapshot's `source` says which);
- the controller's own probes for `latencySource: probe` policies (`ingest_probes`):
  one delta per probed pod per evaluation round.

The store keeps, per (ip, port, role, origin), the deltas received in the window and
their running sum, so an estimate costs a pass over one histogram, not a merge of
the whole window. It answers in `LatencyEstimate`s, the type the selection engine
reads (aviator.selection.types), so a pod's latency keeps one form from here to the
engine and the status.

Semantics the selection engine relies on:

- Every window is filed under who measured it, its `Origin`: "agent" for what agents
  sent (eBPF, or an agent's probe fallback), "controller" for the controller's own
  probes. Readers name the origin they want (`estimate`, `merged`) and origins never
  mix: a policy with `latencySource: ebpf` reads agent data only, one with
  `latencySource: probe` reads the controller's probes only, even when both exist
  for the same pod. The origin comes from the method that wrote the data, never from
  a message, so an agent cannot pass its data off as the controller's.
- Agent windows span the store's `window_s`. A probe window spans what the prober
  asked for (`keep_s`: a few evaluation intervals of the policy that probed; the last
  round sets it when two policies probe one pod), since rounds come once per
  evaluation, not once per second.
- A window slides with its endpoint's reports, not with the clock: when a report of
  the endpoint comes, the deltas that arrived `window_s` or more before it leave,
  give or take half the time since its previous report (`slack`): a tick a little
  late or early, or a pod an agent holds while it is steady and sends every 5 s, keeps
  the same number of reports in the window. Between two reports of an endpoint its
  window, and so its estimate, stays as it is: an endpoint reported with the same
  figures again keeps the same estimate (what lets a reconcile tell an unchanged pod;
  aviator.latency.window), and how old the data is is staleness's to say (below), not
  the window's. A window that went stale starts empty when its endpoint is reported
  again.
- Server-role data (measured on the pod's own socket) is the pod's latency.
  Client-role data (a caller's view of that IP) is used only when no fresh server
  data exists, and never mixed with it. Probe-role data (the kubelet's probes of the
  pod, told apart by the agent) is never the pod's latency: an estimate carries its
  count and quantiles beside the pod's own (`probe_samples`, `probe_p50_ms`,
  `probe_p99_ms`), and the keep-warm samples among the pod's own (`keepwarm`).
- Besides the histogram, a window sums the responses whose status was read and the
  errors among them (`statuses`, `errors`: the error rate over the same deltas as the
  quantiles) and keeps, from the latest report, the requests in flight, the age of the
  oldest open request and the protocol. An endpoint whose window holds no completed
  sample but reports an open request is not unknown: its estimate has `samples` 0 and
  that request's age as every quantile (a lower bound of its latency), so the engine
  can tell a pod that stopped answering from one that has no data.
- An endpoint not heard of for `stale_after_s` (a probe window: for its `keep_s`) is
  unknown (`estimate` returns None), never "fast"; so is an endpoint whose window
  holds no samples. `silent` tells a pod whose data lapsed because the agent that
  reported it stopped reporting (`heard`: e.g. the agent restarting) from a pod never
  measured, or one that lapsed while its agent kept reporting (no traffic), until the
  endpoint is forgotten. Data lapses when the endpoint goes stale, or when the report
  that took its last delta out came (`Window.emptied`: a report after a gap takes
  deltas out sooner than a window after they came).
- A replica that just started holds nothing of what agents measured before it:
  `warming` tells, for a node, that it cannot yet tell a pod it has no data for from
  one measured before (aviator.latency.reporters, which also keeps when each agent
  reported for `silent`).
- When the pod reported behind an IP changes (IP reused by a new pod), the old
  pod's window is dropped.
- Memory is bounded (aviator.latency.quota): every agent window is charged to the
  agent it came from (`owner`: the node its token names), and an endpoint window that
  would take its owner or the store over a bound (`StoreLimits`) is refused, not
  stored; `ingest_snapshot` says why (the quota's reasons): the endpoint then goes
  stale, i.e. unknown, never fast. The controller's own probes are charged to the
  total but never refused. Deltas leave with the window (every `_PRUNE_EVERY_S` for
  idle endpoints too), endpoints unseen for `forget_after_s` are removed, and each
  window holds at most `max_deltas` deltas.

Beside the windows, `maps` (aviator.latency.pressure) keeps which nodes' agents report
full BPF maps, and `loads` (aviator.latency.loads) the gauges their pods reported, for
the same `stale_after_s`.

Times are whatever clock the caller passes as `now` (one clock per store); message
timestamps from agents are not trusted for windowing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from aviator.latency.histogram import Histogram
from aviator.latency.loads import LoadBoard
from aviator.latency.pressure import MapPressure
from aviator.latency.quota import CONTROLLER_OWNER, Ledger, StoreLimits, Usage
from aviator.latency.reporters import Reporters
from aviator.latency.schema import EndpointWindow, Snapshot, Source
from aviator.latency.window import Window, aged, combined_latest
from aviator.selection.types import LatencyEstimate

_PRUNE_EVERY_S = 10.0


Origin = Literal["agent", "controller"]


@dataclass(frozen=True, slots=True)
class Ingested:
    """The endpoint windows of one ingest that were stored, and those refused by reason."""

    accepted: int
    refused: Counter[str]


Key = tuple[str, int, str, Origin]  # (ip, port, role, origin)


class LatencyStore:
    """Windows of latency per endpoint, fed by agent snapshots and the controller's
    probes. Not thread-safe; use from one event loop."""

    def __init__(
        self,
        window_s: float,
        stale_after_s: float,
        *,
        forget_after_s: float | None = None,
        max_deltas: int = 1024,
        limits: StoreLimits | None = None,
    ) -> None:
        if window_s <= 0 or stale_after_s <= 0:
            raise ValueError("window_s and stale_after_s must be > 0")
        self.window_s = window_s
        self.stale_after_s = stale_after_s
        self.forget_after_s = (
            forget_after_s if forget_after_s is not None else max(300.0, 10 * stale_after_s)
        )
        self.max_deltas = max_deltas
        self.ledger = Ledger(limits)
        self._windows: dict[Key, Window] = {}
        # ip -> keys of that ip, so estimates need not scan every endpoint (a list: one
        # key, usually; a set would cost four times its memory).
        self._by_ip: dict[str, list[Key]] = {}
        self._next_prune: float | None = None
        self.reporters = Reporters(window_s, stale_after_s)
        self.maps = MapPressure(stale_after_s)
        self.loads = LoadBoard(stale_after_s)

    def __len__(self) -> int:
        """Number of endpoints held."""
        return len(self._windows)

    def ips(self) -> list[str]:
        """Every IP with data (fresh or not yet forgotten)."""
        return list(self._by_ip)

    @property
    def total(self) -> Usage:
        """What the whole store holds."""
        return self.ledger.total

    def usage(self, owner: str) -> Usage:
        """What `owner` holds (an agent's node; CONTROLLER_OWNER for probe windows)."""
        return self.ledger.usage(owner)

    # --- writing --------------------------------------------------------------------

    def ingest(self, msg: Snapshot, now: float) -> int:
        """Add one agent snapshot's deltas; returns how many endpoints were accepted
        (see `ingest_snapshot` for the refused ones); the whole report: `heard` too."""
        self.heard(msg.node, now)
        return self.ingest_snapshot(msg, now).accepted

    def heard(self, owner: str, now: float, *, anew: bool = False) -> None:
        """`owner` (an agent's node) reported, endpoints or not; `anew`: the first report
        of a new stream (its agent started, or reconnected). That, or a report after a
        silence longer than the staleness bound, is remembered: what lapsed before it
        lapsed for want of a reporter, and the agent may not have measured it again."""
        self.reporters.heard(owner, now, anew=anew)

    def ingest_snapshot(self, msg: Snapshot, now: float) -> Ingested:
        """Add an agent's snapshot (or part of one), charged to `msg.node`: the node
        the agent speaks for, which the caller has checked (the receiver: against
        its token). Within the limits; says what was accepted and refused."""
        self._maybe_prune(now)
        accepted = 0
        refused: Counter[str] = Counter()
        owner, source = msg.node, msg.source
        for ep in msg.endpoints:
            reason = self._ingest_endpoint(
                ep, "agent", owner, source, now, self.window_s, self.stale_after_s
            )
            if reason is None:
                accepted += 1
            else:
                refused[reason] += 1
        return Ingested(accepted, refused)

    def ingest_probes(self, endpoints: Iterable[EndpointWindow], now: float, keep_s: float) -> int:
        """Add one round of the controller's probes (one delta per probed endpoint),
        kept for `keep_s`; returns how many endpoints were added."""
        if keep_s <= 0:
            raise ValueError("keep_s must be > 0")
        self._maybe_prune(now)
        self.heard(CONTROLLER_OWNER, now)
        n = 0
        for ep in endpoints:
            self._ingest_endpoint(ep, "controller", CONTROLLER_OWNER, "probe", now, keep_s, keep_s)
            n += 1
        return n

    def _maybe_prune(self, now: float) -> None:
        if self._next_prune is None or now >= self._next_prune:
            self.prune(now)
            self._next_prune = now + _PRUNE_EVERY_S

    def _ingest_endpoint(
        self,
        ep: EndpointWindow,
        origin: Origin,
        owner: str,
        source: Source,
        now: float,
        keep_s: float,
        stale_s: float,
    ) -> str | None:
        """File one endpoint window; the reason it was refused, or None. (The hot path
        of every report: thousands of calls a second, so it reads attributes once.)"""
        key = (ep.ip, ep.port, ep.role, origin)
        win = self._windows.get(key)
        pod = ep.pod
        if win is not None and (
            win.owner != owner or (pod is not None and win.pod is not None and pod != win.pod)
        ):
            self._drop(key)  # another pod (IP reused) or another agent: start afresh
            win = None
        hist = ep.hist
        buckets = len(hist)
        freed = 0  # buckets of the deltas that left the window
        if win is None:
            reason = self.ledger.refusal(owner, True, buckets)
            if reason is not None:
                return reason
            win = Window(pod, source, now, keep_s, stale_s, owner)
            self._windows[key] = win
            self._by_ip.setdefault(ep.ip, []).append(key)
            self.ledger.charge(owner, 1, 0)
        else:
            gap = now - win.last_seen
            # What went stale is never read again; else what a window's reports left.
            before = math.inf if gap > win.stale_s else now - keep_s + slack(gap, keep_s)
            if win.renew(now, ep, source, before):
                # The delta that leaves comes again: the same sums, bounds and estimate.
                win.keep_s, win.stale_s = keep_s, stale_s
                win.last_seen = now
                if pod is not None:
                    win.pod = pod
                return None
            if win.deltas and win.deltas[0][0] <= before:
                freed = win.expire(before)
                if not win.deltas:  # lapsed now, or when it went stale
                    win.emptied = min(now, win.last_seen + win.stale_s)
            # Within the bounds before, and no more buckets than just left: within them
            # still (a steady endpoint's every report), so no need to ask.
            if buckets > freed:
                if freed:
                    self.ledger.charge(owner, 0, -freed)
                    freed = 0
                reason = self.ledger.refusal(owner, False, buckets)
                if reason is not None:
                    return reason
            win.keep_s, win.stale_s = keep_s, stale_s
            win.last_seen = now
            win.source = source
            if pod is not None:
                win.pod = pod
        win.rif = ep.rif
        win.oldest_open_us = ep.oldest_open_us
        win.protocol = ep.protocol
        win.touch()
        added = win.add(now, ep, self.max_deltas) if buckets else 0
        if added != freed:  # one charge for what left and what came
            self.ledger.charge(owner, 0, added - freed)
        return None

    def _expire(self, win: Window, before: float) -> None:
        freed = win.expire(before)
        if freed:
            self.ledger.charge(win.owner, 0, -freed)

    def _drop(self, key: Key) -> None:
        win = self._windows.pop(key)
        self.ledger.charge(win.owner, -1, -win.buckets)
        keys = self._by_ip.get(key[0])
        if keys is not None and key in keys:
            keys.remove(key)
            if not keys:
                del self._by_ip[key[0]]

    def forget(self, ip: str) -> None:
        """Drop everything known about `ip` (e.g. its pod is gone)."""
        for key in list(self._by_ip.get(ip, ())):
            self._drop(key)

    def prune(self, now: float) -> int:
        """Drop endpoints unseen for `forget_after_s`, and deltas out of every window;
        returns how many endpoints went."""
        cutoff = now - self.forget_after_s
        gone = [k for k, w in self._windows.items() if w.last_seen <= cutoff]
        for key in gone:
            self._drop(key)
        self.reporters.forget(cutoff)
        for win in self._windows.values():
            if win.deltas and win.last_seen < now - win.stale_s:
                self._expire(win, math.inf)  # unknown: its deltas are never read again
                win.emptied = win.last_seen + win.stale_s
        return len(gone)

    # --- reading --------------------------------------------------------------------

    def _fresh(
        self, ip: str, now: float, ports: Collection[int] | None, origin: Origin
    ) -> tuple[list[Window], list[Window]]:
        """The windows of `origin` that speak for `ip` (on one of `ports`, when given):
        fresh server ones, else fresh client ones; and the fresh probe-role ones (the
        kubelet's probes of it). One pass over the address's endpoints."""
        keys = self._by_ip.get(ip)
        if not keys:
            return [], []
        server: list[Window] = []
        client: list[Window] = []
        probes: list[Window] = []
        windows = self._windows
        for key in keys:
            if key[3] != origin or (ports is not None and key[1] not in ports):
                continue
            win = windows[key]
            if win.last_seen < now - win.stale_s:
                continue
            role = key[2]
            (server if role == "server" else probes if role == "probe" else client).append(win)
        return server or client, probes

    def _sole(
        self, key: Key, now: float, ports: Collection[int] | None, origin: Origin
    ) -> Window | None:
        """`_fresh` for an address with one endpoint, `key` (the usual case), without
        its lists: the window when it speaks for the address (of `origin`, on one of
        `ports` when given, fresh, not the kubelet's probes)."""
        if not _speaks(key, ports, origin):
            return None
        win = self._windows[key]
        if win.last_seen < now - win.stale_s:
            return None
        return win

    def latest(
        self, ip: str, now: float, wanted: Collection[int] | None, origin: Origin
    ) -> tuple[LatencyEstimate | None, float]:
        """`estimate` (of the `wanted` ports, all when None) as of the newest report it
        is built from (age 0 then), and that report's time (0.0 with no estimate): the
        same estimate object while what the windows say is the same, however often they
        are reported again."""
        keys = self._by_ip.get(ip)
        if keys is not None and len(keys) == 1:  # the common case: one endpoint
            sole = self._sole(keys[0], now, wanted, origin)
            return (None, 0.0) if sole is None else (sole.latest(), sole.last_seen)
        windows, probe_windows = self._fresh(ip, now, wanted, origin)
        if not windows:
            return None, 0.0
        return combined_latest(windows, probe_windows)

    def measured(self, ip: str) -> bool:
        """Whether the store holds any window of `ip`, of any port, role or origin."""
        return ip in self._by_ip

    def mark(
        self, ip: str, now: float, wanted: Collection[int] | None, origin: Origin
    ) -> tuple[int, float] | None:
        """For an address whose latency one fresh window holds, with an estimate: that
        window's mark (aviator.latency.window: the same mark, the same `latest` estimate
        object and an equal total) and when it last reported; None for any other (no
        window, several, stale, nothing to say)."""
        keys = self._by_ip.get(ip)
        if keys is None or len(keys) != 1:
            return None
        sole = self._sole(keys[0], now, wanted, origin)
        if sole is None or sole.latest() is None:
            return None
        return sole.mark, sole.last_seen

    def estimate(
        self,
        ip: str,
        now: float,
        port: int | None = None,
        *,
        ports: Collection[int] | None = None,
        origin: Origin = "agent",
    ) -> LatencyEstimate | None:
        """Latency of the pod at `ip` as `origin` measured it, as of `now`, None when
        unknown; only of `port`, or of `ports` (e.g. a Service's target ports), when
        given."""
        found, at = self.latest(ip, now, (port,) if port is not None else ports, origin)
        return aged(found, now - at)

    def silent(
        self, ip: str, now: float, *, ports: Collection[int] | None = None, origin: Origin = "agent"
    ) -> bool:
        """Whether `ip` was measured (a server or client window of `origin`, on one of
        `ports` when given) and its data lapsed for want of a reporter: every such window
        has lapsed (gone stale, or its samples aged out of it), and the agent that sent
        it stopped reporting before it lapsed, or has come back since its last sample
        (a restarted agent reports before it has measured every pod again). A window
        that lapsed while its agent kept reporting saw no traffic: not silent. False
        past `forget_after_s` (then the pod is as good as never measured)."""
        forgotten = now - self.forget_after_s
        seen = False
        for key in self._by_ip.get(ip, ()):
            if not _speaks(key, ports, origin):
                continue
            win = self._windows[key]
            if win.sampled is None:
                continue  # never held a sample: nothing to be silent about
            lapsed = win.last_seen + win.stale_s
            if not win.deltas and win.emptied is not None:  # its samples left with a report
                lapsed = min(lapsed, win.emptied)
            if now <= lapsed:
                return False
            went_quiet = self.reporters.last(win.owner) < lapsed
            came_back = self.reporters.resumed(win.owner) > win.sampled
            if not (went_quiet or came_back):
                return False
            seen = seen or win.last_seen > forgotten
        return seen

    def merged(
        self,
        ips: Iterable[str],
        now: float,
        *,
        origin: Origin = "agent",
        ports: Collection[int] | None = None,
    ) -> Histogram:
        """The windows of all `ips` (only of `ports`, when given) from `origin` in one
        histogram (e.g. the active set's p99)."""
        out = Histogram()
        by_ip = self._by_ip
        for ip in ips:
            keys = by_ip.get(ip)
            if keys is not None and len(keys) == 1:
                sole = self._sole(keys[0], now, ports, origin)
                if sole is not None:
                    out.update(sole.total)
                continue
            for win in self._fresh(ip, now, ports, origin)[0]:
                out.update(win.total)
        return out


def slack(gap_s: float, keep_s: float) -> float:
    """How much sooner than `keep_s` after it a delta leaves, at a report `gap_s` after
    the endpoint's previous one: half the gap (at most half the window), so a report a
    little late or early leaves the same deltas as one on time."""
    return min(gap_s, keep_s) / 2


def _speaks(key: Key, ports: Collection[int] | None, origin: Origin) -> bool:
    """Whether the window under `key` may speak for its address's latency: of `origin`,
    on one of `ports` when given, and not the kubelet's probes."""
    return key[3] == origin and key[2] != "probe" and (ports is None or key[1] in ports)
