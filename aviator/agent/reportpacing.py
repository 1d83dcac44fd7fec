"""Paced reports: a steady endpoint's windows are held and sent merged, once per period;
one that changed goes out at the next report interval (pure).

Every report interval the agent turns its counters into one window per endpoint
(aviator.agent.windows) and sends them to every controller replica, each of which
decodes and files every window: at 50,000 pods reported every second, 50,000 windows
a second on every replica, whatever the policies need. A policy reads a pod's data
once per evaluationInterval, so with `steady_s` > 0 (`--steady-report-interval`)
`ReportPacer.take` holds an endpoint's windows, merged into one (the same deltas
summed: nothing is lost, only sent later; the newest requests in flight, open request
and protocol), and sends the merge when

- the endpoint is new to the pacer, or its pod changed (an IP reused: what was held
  belonged to a pod that is gone and is dropped);
- it reads differently from the last one sent (`differs`): its p50 or p99 moved by
  more than CHANGE_RATIO either way, errors appeared or went, or its protocol changed.
  A pod turning slow is reported at the next interval, as it would be unpaced;
- its period has passed since the last one sent (within half a report interval: the
  ticks' own jitter): the shortest evaluationInterval of the policies selecting its
  pod (`report_periods`), at most `steady_s`, at least the report interval. A pod no
  policy selects waits `steady_s`. A held endpoint without new traffic goes out then
  too, with its last requests in flight and open request;
- the report is urgent (a request open past its pod's p99Threshold,
  aviator.agent.urgent): everything held goes out.

So a policy still sees a fresh delta of each of its pods at every evaluation, and the
breaker counts as it would. The controller must keep an endpoint for longer than
`steady_s` (`--latency-stale-after`, 10 s by default) or a held pod reads as unknown
between two reports; its latency window (`--latency-window`) should span a few
periods. `steady_s` 0 (the default) sends every window every interval.

The pacer remembers an endpoint until nothing is held for it and it was last sent
more than two `steady_s` ago: memory follows the endpoints that report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aviator.agent.targets import JSON, smallest_per_pod
from aviator.api.codec import PolicyError
from aviator.api.types import AviatorPolicySpec
from aviator.latency.schema import EndpointWindow, Role

# A latency that moved by more than this factor either way is a change, sent at once.
CHANGE_RATIO = 1.25
_QUANTILES = (0.5, 0.99)

Key = tuple[str, int, Role]


@dataclass(frozen=True, slots=True)
class Shape:
    """What a receiver reads of a window, to tell a change: p50 and p99 in µs (None
    without a completed request), whether it held errors, its protocol."""

    quantiles_us: tuple[float, float] | None
    erred: bool
    protocol: str

    @staticmethod
    def of(w: EndpointWindow) -> Shape:
        qs = w.hist.quantiles(_QUANTILES) if w.count > 0 else None
        return Shape(None if qs is None else (qs[0], qs[1]), w.errors > 0, w.protocol)


def differs(last: Shape, now: Shape) -> bool:
    """Whether a window shaped `now` reads differently from the one sent, `last`. A
    window without completed requests says nothing new of the latency."""
    if now.erred != last.erred or now.protocol != last.protocol:
        return True
    if now.quantiles_us is None:
        return False
    if last.quantiles_us is None:
        return True
    return any(
        b > a * CHANGE_RATIO or a > b * CHANGE_RATIO
        for a, b in zip(last.quantiles_us, now.quantiles_us, strict=True)
    )


def merged(older: EndpointWindow, newer: EndpointWindow) -> EndpointWindow:
    """Both windows of one endpoint as one: counts summed, the newest gauges."""
    return EndpointWindow(
        newer.ip,
        newer.port,
        newer.role,
        newer.pod if newer.pod is not None else older.pod,
        older.hist + newer.hist,
        older.count + newer.count,
        older.sum_us + newer.sum_us,
        max(older.max_us, newer.max_us),
        newer.rif,
        older.aborted + newer.aborted,
        newer.protocol,
        older.statuses + newer.statuses,
        older.errors + newer.errors,
        newer.oldest_open_us,
        older.keepwarm + newer.keepwarm,
    )


def report_periods(
    policies: Iterable[JSON],
    service_for: Callable[[str, str], JSON | None],
    pods: Iterable[JSON],
) -> dict[str, float]:
    """Pod IP → the shortest evaluationInterval (s) of the policies selecting it."""
    return smallest_per_pod(policies, service_for, pods, _interval_s)


def _interval_s(policy: JSON) -> float | None:
    try:
        return AviatorPolicySpec.from_dict(policy.get("spec")).evaluation_interval.seconds
    except PolicyError:
        return None


@dataclass(slots=True)
class _Endpoint:
    held: EndpointWindow | None = None
    sent_at: float | None = None
    sent: Shape | None = None
    pod: str | None = None  # the pod its windows named last


class ReportPacer:
    """Decides, at each report, which endpoints' windows go out (see the module
    docstring); `periods` (pod IP → seconds, `report_periods`) is the agent's to keep."""

    def __init__(self, steady_s: float, interval_s: float) -> None:
        if steady_s < 0 or interval_s <= 0:
            raise ValueError("steady_s must be >= 0 and interval_s > 0")
        self.steady_s = steady_s
        self.interval_s = interval_s
        self.periods: dict[str, float] = {}
        self.held = 0  # windows held back so far (merged into a later one)
        self._endpoints: dict[Key, _Endpoint] = {}

    def __len__(self) -> int:
        return len(self._endpoints)

    def take(
        self, windows: Iterable[EndpointWindow], now: float, *, urgent: bool = False
    ) -> tuple[EndpointWindow, ...]:
        """This report's windows: `windows` (one per endpoint) and what was held, those
        due now sent (merged), the rest held."""
        if self.steady_s <= 0:
            return tuple(windows)
        out: list[EndpointWindow] = []
        seen: set[Key] = set()
        for w in windows:
            key = (w.ip, w.port, w.role)
            seen.add(key)
            ep = self._endpoints.get(key)
            if ep is None:
                ep = self._endpoints[key] = _Endpoint()
            if w.pod is not None:
                if ep.pod not in (None, w.pod):  # another pod at the IP: start afresh
                    ep.held, ep.sent = None, None
                ep.pod = w.pod
            held = ep.held
            ep.held = w if held is None else merged(held, w)
            self._offer(ep, now, urgent, out)
        for key, ep in list(self._endpoints.items()):
            if key in seen:
                continue
            if ep.held is not None:
                self._offer(ep, now, urgent, out)
            elif ep.sent_at is None or now - ep.sent_at > 2 * self.steady_s:
                del self._endpoints[key]
        return tuple(out)

    def _offer(self, ep: _Endpoint, now: float, urgent: bool, out: list[EndpointWindow]) -> None:
        """Send `ep`'s held window into `out` if it is due (else count it held)."""
        held = ep.held
        assert held is not None
        shape = Shape.of(held)
        if urgent or ep.sent is None or ep.sent_at is None or differs(ep.sent, shape):
            due = True
        else:
            due = now - ep.sent_at >= self._period(held.ip) - self.interval_s / 2
        if not due:
            self.held += 1
            return
        out.append(held)
        ep.held, ep.sent_at, ep.sent = None, now, shape

    def _period(self, ip: str) -> float:
        period = min(self.periods.get(ip, self.steady_s), self.steady_s)
        return max(period, self.interval_s)


__all__ = [
    "CHANGE_RATIO",
    "ReportPacer",
    "Shape",
    "differs",
    "merged",
    "report_periods",
]
