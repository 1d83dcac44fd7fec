"""One endpoint's window in the latency store (aviator.latency.store): the deltas received
within it, their running sums, and what the latest report said.

Adding a delta and expiring old ones keep the sums (histogram, statuses, errors,
keep-warm samples) and
the count of held buckets exact, so an estimate costs a pass over one histogram and
the store's memory accounting is one subtraction per expired delta. A steady
endpoint's report, whose delta is the one leaving, renews the window (`renew`): the
delta's time moves and nothing else, so nothing the window says is read again.

A window remembers its quantiles and its last estimate with the figures each was
built from, and hands out the same ones while those figures are the same: a steady
window's estimate is one comparison, and an unchanged estimate is the same object,
which is what lets a reconcile reuse what it built from it (the engine's input, the
status row). Everything an estimate reads is in its key, so reuse never changes
what an estimate says. A window's `mark` changes whenever a read finds what it says
changed (its estimate, or its total, which the merged p99 of a set of pods reads): a
reader that remembers the mark knows, without reading it again, that the window says
what it said (aviator.reconcilers.quiet). An estimate is as of the window's latest report (age 0 then):
how old it is is the reader's to add (`aged`), so a window that reports the same again
still hands out the same object. `combined_latest` is the estimate of the windows the
store found for one address (several: merged, built afresh).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from aviator.latency.histogram import Histogram
from aviator.latency.schema import AppProtocol, EndpointWindow, Source
from aviator.selection.types import LatencyEstimate

QUANTILES = (0.5, 0.9, 0.99)
# Marks for `Window.mark`: unique in the process, so a window dropped and made again
# never has a mark a reader remembers.
_MARKS = itertools.count(1)


@dataclass(slots=True)
class Window:
    """One endpoint's recent deltas and their sum."""

    pod: str | None
    source: Source
    last_seen: float
    keep_s: float  # deltas older than this leave the window
    stale_s: float  # unheard of for longer than this: unknown
    owner: str  # the agent (node) charged for it, CONTROLLER_OWNER for probe windows
    sampled: float | None = None  # arrival of the newest delta that held samples
    # Arrival of the report that took the last delta out (its data lapsed then): a
    # report after a gap takes deltas out sooner than `keep_s` after they came (`slack`).
    emptied: float | None = None
    rif: int = 0
    oldest_open_us: int = 0  # latest report
    protocol: AppProtocol = "opaque"  # latest report
    # (arrival, histogram delta, statuses, errors, keep-warm samples), oldest first;
    # they leave as reports come, not with the clock (aviator.latency.store). A list:
    # a window holds a few deltas (its span over the report interval), and an empty
    # deque costs 760 bytes against a list's 56, for each of tens of thousands.
    deltas: list[tuple[float, Histogram, int, int, int]] = field(default_factory=list)
    total: Histogram = field(default_factory=Histogram)
    statuses: int = 0  # over `deltas`
    errors: int = 0
    keepwarm: int = 0  # of total.count: the agent's keep-warm probes
    buckets: int = 0  # non-empty buckets over `deltas` (what the limits count)
    # p50/p90/p99 in µs of `total` as it was when `cached_of` was taken: recomputed
    # only when the total differs (a steady pod's window adds the delta it expires).
    cached: tuple[float, float, float] | None = None
    cached_of: Histogram | None = None
    # The last `latest` and every figure it was built from (its key): the same
    # object while they are the same.
    memo: tuple[tuple[object, ...], LatencyEstimate | None] | None = None
    # Bumped by every report and every delta that leaves (`touch`): `memo` is known to
    # be current while `memo_version` is this, without a look at the figures.
    version: int = 0
    memo_version: int = -1
    # A new number whenever a read finds the estimate or the total changed (module
    # docstring): the same mark, the same estimate object and an equal total.
    mark: int = field(default_factory=lambda: next(_MARKS))

    def add(self, at: float, ep: EndpointWindow, max_deltas: int) -> int:
        """Add an endpoint window's delta, arrived at `at`; returns the change in held
        buckets."""
        delta = ep.hist
        added = len(delta)
        if not added:
            return 0
        self.sampled = at
        self.version += 1
        deltas = self.deltas
        deltas.append((at, delta, ep.statuses, ep.errors, ep.keepwarm))
        self.total.update(delta)
        self.statuses += ep.statuses
        self.errors += ep.errors
        self.keepwarm += ep.keepwarm
        self.buckets += added
        if len(deltas) > max_deltas:
            added -= self._pop()
        return added

    def renew(self, at: float, ep: EndpointWindow, source: Source, before: float) -> bool:
        """Take a report, arrived at `at`, whose delta is the one leaving the window (the
        only one arrived by `before`) with the same requests in flight, oldest open
        request, protocol and source: that delta leaves and comes again, and nothing the
        window says changes (its sums, its estimate, its mark). A steady endpoint's
        every report. False, changing nothing, for any other."""
        deltas = self.deltas
        if not deltas or deltas[0][0] > before or (len(deltas) > 1 and deltas[1][0] <= before):
            return False
        _, hist, statuses, errors, keepwarm = deltas[0]
        if (
            ep.statuses != statuses
            or ep.errors != errors
            or ep.keepwarm != keepwarm
            or ep.rif != self.rif
            or ep.oldest_open_us != self.oldest_open_us
            or ep.protocol != self.protocol
            or source != self.source
            or ep.hist != hist
        ):
            return False
        del deltas[0]
        deltas.append((at, ep.hist, statuses, errors, keepwarm))
        self.sampled = at
        return True

    def expire(self, before: float) -> int:
        """Drop deltas from `before` or earlier; returns the buckets freed."""
        freed = 0
        deltas = self.deltas
        while deltas and deltas[0][0] <= before:
            freed += self._pop()
        return freed

    def touch(self) -> None:
        """The latest report changed what the window says besides its deltas (requests
        in flight, the oldest open request, protocol, source)."""
        self.version += 1

    def _pop(self) -> int:
        self.version += 1
        _, old, statuses, errors, keepwarm = self.deltas.pop(0)
        self.total.remove_part(old)  # `total` is the sum of `deltas`
        self.statuses -= statuses
        self.errors -= errors
        self.keepwarm -= keepwarm
        freed = len(old)
        self.buckets -= freed
        return freed

    def quantiles_us(self) -> tuple[float, float, float] | None:
        if not self.total:
            return None
        if self.cached is None or self.cached_of != self.total:
            qs = self.total.quantiles(QUANTILES)
            assert qs is not None
            self.cached = (qs[0], qs[1], qs[2])
            self.cached_of = self.total.copy()
            self.mark = next(_MARKS)
        return self.cached

    def latest(self) -> LatencyEstimate | None:
        """This window's estimate alone as of its latest report, `last_seen` (age 0
        then; the store's, for an endpoint with one fresh window and no probe-role
        data; see aviator.latency.store): None without a completed sample or an open
        request; with open requests only, the oldest one's age as every quantile (a
        lower bound). The same object while every figure it is built from is the same."""
        if self.memo_version == self.version and self.memo is not None:
            return self.memo[1]
        self.memo_version = self.version
        qs = self.quantiles_us()
        count = self.total.count
        open_us = self.oldest_open_us
        key = (
            qs,
            count,
            open_us,
            self.rif,
            self.source,
            self.statuses,
            self.errors,
            self.protocol,
            self.keepwarm,
        )
        held = self.memo
        if held is not None and held[0] == key:
            return held[1]
        estimate = _estimate(qs, count, open_us, self)
        self.memo = (key, estimate)
        self.mark = next(_MARKS)
        return estimate


def aged(estimate: LatencyEstimate | None, age_s: float) -> LatencyEstimate | None:
    """`estimate` (as of its newest sample) `age_s` seconds later."""
    if estimate is None or age_s <= 0.0:
        return estimate
    return replace(estimate, age_s=age_s)


def _estimate(
    qs: tuple[float, float, float] | None, count: int, open_us: int, win: Window
) -> LatencyEstimate | None:
    if qs is None:
        if not open_us:
            return None
        qs = (float(open_us), float(open_us), float(open_us))  # a lower bound
    return LatencyEstimate(
        p50_ms=qs[0] / 1000.0,
        p90_ms=qs[1] / 1000.0,
        p99_ms=qs[2] / 1000.0,
        rif=win.rif,
        samples=count,
        source=win.source,
        oldest_open_ms=open_us / 1000.0,
        statuses=win.statuses,
        errors=win.errors,
        protocol=win.protocol,
        keepwarm=min(count, win.keepwarm),
    )


def combined_latest(
    windows: list[Window], probe_windows: list[Window]
) -> tuple[LatencyEstimate | None, float]:
    """The estimate of the windows that speak for one address (`windows`: server ones,
    else client ones, as the store chose them, at least one) beside the kubelet's
    probes of it (`probe_windows`; see aviator.latency.store), as of the newest report
    among `windows` (age 0 then), and that report's time: one window alone is that
    window's `latest`; several are merged into one histogram."""
    if len(windows) == 1 and not probe_windows:
        return windows[0].latest(), windows[0].last_seen
    if len(windows) == 1:
        newest = windows[0]
        qs = newest.quantiles_us()
        samples = newest.total.count
        open_us = newest.oldest_open_us
    else:
        newest = max(windows, key=lambda w: w.last_seen)
        total = Histogram.merge_all(w.total for w in windows)
        merged = total.quantiles(QUANTILES)
        qs = None if merged is None else (merged[0], merged[1], merged[2])
        samples = total.count
        open_us = max(w.oldest_open_us for w in windows)
    if qs is None:
        if not open_us:
            return None, newest.last_seen
        qs = (float(open_us), float(open_us), float(open_us))  # a lower bound
    probe_samples = 0
    probe_qs = None
    if probe_windows:
        probes = Histogram.merge_all(w.total for w in probe_windows)
        probe_samples = probes.count
        probe_qs = probes.quantiles((0.5, 0.99)) if probes else None
    estimate = LatencyEstimate(
        p50_ms=qs[0] / 1000.0,
        p90_ms=qs[1] / 1000.0,
        p99_ms=qs[2] / 1000.0,
        rif=sum(w.rif for w in windows),
        samples=samples,
        source=newest.source,
        oldest_open_ms=open_us / 1000.0,
        statuses=sum(w.statuses for w in windows),
        errors=sum(w.errors for w in windows),
        protocol=newest.protocol,
        keepwarm=min(samples, sum(w.keepwarm for w in windows)),
        probe_samples=probe_samples,
        probe_p50_ms=None if probe_qs is None else probe_qs[0] / 1000.0,
        probe_p99_ms=None if probe_qs is None else probe_qs[1] / 1000.0,
    )
    return estimate, newest.last_seen
