"""Client-side request records and their percentiles (pure)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic time the request completed
    latency_s: float
    ok: bool
    served_by: str | None = None
    error: str | None = None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (q in [0, 1])."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Summary:
    count: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    by_pod: dict[str, int]

    @property
    def success_rate(self) -> float:
        return 1.0 if self.count == 0 else (self.count - self.errors) / self.count

    def line(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}ms"

        return (
            f"p50 {ms(self.p50_ms):>6}  p99 {ms(self.p99_ms):>6}  n={self.count} err={self.errors}"
        )


def summarize(samples: Iterable[Sample]) -> Summary:
    items = list(samples)
    ok = sorted(s.latency_s * 1000 for s in items if s.ok)
    return Summary(
        count=len(items),
        errors=sum(1 for s in items if not s.ok),
        p50_ms=percentile(ok, 0.50),
        p99_ms=percentile(ok, 0.99),
        by_pod=dict(Counter(s.served_by for s in items if s.ok and s.served_by)),
    )
