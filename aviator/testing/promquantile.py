"""Prometheus' `histogram_quantile` over classic buckets, for tests that check what a
dashboard will compute from exported histograms.

The algorithm of promql/quantile.go (bucketQuantile): the first bucket whose cumulative
count reaches q * total, interpolated linearly between the previous bound (0 for the
first bucket) and its own; the highest finite bound when the rank falls in +Inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal


def histogram_quantile(q: float, buckets: Sequence[tuple[str, float]], scale: int = 1) -> float:
    """`buckets`: cumulative (le, count) pairs ascending, ending with ("+Inf", total), as
    exported; the answer is in the bounds' unit times `scale` (10**6: seconds → µs)."""
    bounds = [
        (math.inf if le == "+Inf" else float(Decimal(le) * scale), float(n)) for le, n in buckets
    ]
    if len(bounds) < 2 or bounds[-1][0] != math.inf or bounds[-1][1] == 0:
        return math.nan
    rank = q * bounds[-1][1]
    b = next((i for i, (_, n) in enumerate(bounds[:-1]) if n >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2][0]
    start, below = (0.0, 0.0) if b == 0 else bounds[b - 1]
    end, count = bounds[b]
    return start + (end - start) * (rank - below) / (count - below)
