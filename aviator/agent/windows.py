"""Turning cumulative per-endpoint counters into per-window deltas (pure).

Latency sources (the BPF maps, the prober) only ever count up; the agent never resets
them. Each report interval it reads a cumulative snapshot and `WindowDiffer.advance`
subtracts the previous one. Endpoints appearing for the first time, and endpoints
whose counters went backwards (the program was reloaded, or an LRU-evicted map entry
was recreated), start a new baseline: everything they hold was counted after the
previous read, so it is this window's delta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from aviator.latency.histogram import CounterReset, Histogram
from aviator.latency.schema import AppProtocol, EndpointWindow, Role


class EndpointKeyLike(Protocol):
    """What identifies an endpoint (aviator.agent.bpf.EndpointKey fits)."""

    @property
    def ip(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def role(self) -> Role: ...


class CountersLike(Protocol):
    """Cumulative counters of one endpoint (aviator.agent.bpf.EndpointCounters fits)."""

    @property
    def buckets(self) -> Sequence[int]: ...
    @property
    def count(self) -> int: ...
    @property
    def sum_us(self) -> int: ...
    @property
    def max_us(self) -> int: ...
    @property
    def rif(self) -> int: ...
    @property
    def aborted(self) -> int: ...
    @property
    def statuses(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def protocol(self) -> AppProtocol: ...
    @property
    def oldest_open_us(self) -> int: ...
    @property
    def keepwarm(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Baseline:
    hist: Histogram
    count: int
    sum_us: int
    aborted: int
    statuses: int
    errors: int
    keepwarm: int


@dataclass(frozen=True, slots=True)
class _Delta:
    count: int
    sum_us: int
    aborted: int
    statuses: int
    errors: int
    keepwarm: int


class WindowDiffer:
    """Remembers the last cumulative snapshot and hands out what changed since."""

    def __init__(self) -> None:
        self._base: dict[tuple[str, int, Role], _Baseline] = {}
        self.resets = 0  # endpoints whose counters went backwards

    def __len__(self) -> int:
        return len(self._base)

    def advance(
        self,
        snapshot: Iterable[tuple[EndpointKeyLike, CountersLike]],
        *,
        include_idle: bool = False,
    ) -> list[EndpointWindow]:
        """Deltas since the previous call, as EndpointWindows with `pod` unset.

        `snapshot` is the (key, counters) pairs of one cumulative read, e.g. the
        `.items()` of BpfLatencySource.read().

        Endpoints with nothing to say (no requests completed or aborted, none in
        flight) are left out unless `include_idle`. Endpoints missing from `snapshot`
        are forgotten.
        """
        out: list[EndpointWindow] = []
        base = self._base
        fresh: dict[tuple[str, int, Role], _Baseline] = {}
        for key, c in snapshot:
            k = (key.ip, key.port, key.role)
            old = base.get(k)
            if (
                old is not None
                and c.count == old.count
                and c.aborted == old.aborted
                and c.sum_us == old.sum_us
                and c.statuses == old.statuses
                and c.errors == old.errors
                and c.keepwarm == old.keepwarm
            ):
                # Nothing completed: skip building a histogram from the dense buckets,
                # and anything at all for an idle endpoint (the common case).
                fresh[k] = old
                if not (c.rif or include_idle):
                    continue
                delta = Histogram()
                d = _Delta(0, 0, 0, 0, 0, 0)
            else:
                now = _Baseline(
                    Histogram(c.buckets),
                    c.count,
                    c.sum_us,
                    c.aborted,
                    c.statuses,
                    c.errors,
                    c.keepwarm,
                )
                fresh[k] = now
                delta, d = self._diff(old, now)
            if d.count or d.aborted or c.rif or include_idle:
                out.append(
                    EndpointWindow(
                        ip=key.ip,
                        port=key.port,
                        role=key.role,
                        pod=None,
                        hist=delta,
                        count=d.count,
                        sum_us=d.sum_us,
                        max_us=c.max_us,
                        rif=c.rif,
                        aborted=d.aborted,
                        protocol=c.protocol,
                        # A status is read once per response: never more than counted.
                        statuses=min(d.statuses, d.count),
                        errors=min(d.errors, d.statuses, d.count),
                        oldest_open_us=c.oldest_open_us,
                        keepwarm=min(d.keepwarm, d.count),
                    )
                )
        self._base = fresh
        return out

    def _diff(self, old: _Baseline | None, now: _Baseline) -> tuple[Histogram, _Delta]:
        if old is not None:
            try:
                delta = now.hist.delta(old.hist)
            except CounterReset:
                pass
            else:
                if (
                    now.count >= old.count
                    and now.sum_us >= old.sum_us
                    and now.aborted >= old.aborted
                    and now.statuses >= old.statuses
                    and now.errors >= old.errors
                    and now.keepwarm >= old.keepwarm
                ):
                    return delta, _Delta(
                        now.count - old.count,
                        now.sum_us - old.sum_us,
                        now.aborted - old.aborted,
                        now.statuses - old.statuses,
                        now.errors - old.errors,
                        now.keepwarm - old.keepwarm,
                    )
            self.resets += 1
        return now.hist.copy(), _Delta(
            now.count, now.sum_us, now.aborted, now.statuses, now.errors, now.keepwarm
        )


def attach_pods(
    windows: Iterable[EndpointWindow], pod_of: Callable[[str], str | None]
) -> list[EndpointWindow]:
    """The same windows with `pod` filled from an IP → "ns/name" lookup (server and
    probe roles only: a client-role IP is the remote peer, which may live on another
    node)."""
    out: list[EndpointWindow] = []
    for w in windows:
        pod = pod_of(w.ip) if w.role != "client" else None
        out.append(w if pod is None else _with_pod(w, pod))
    return out


def _with_pod(w: EndpointWindow, pod: str) -> EndpointWindow:
    return replace(w, pod=pod)
