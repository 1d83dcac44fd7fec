"""The classic Prometheus buckets the agent exports its log-linear histograms into.

The exported bounds are log-linear bucket boundaries themselves (aviator/latency/
histogram.py), so folding is exact: every log-linear bucket lies wholly inside one
exported bucket, no sample is split, lost or counted twice, and each sample counts
under every `le` at or above its value, as Prometheus means it.

Layout, for `per_octave` b in 1, 2, 4, 8, 16:

- one bucket for everything below 2^MIN_EXP µs (64 µs);
- every power of two [2^e, 2^(e+1)) µs for MIN_EXP <= e < TOP_EXP (up to 2^24 µs,
  about 16.8 s) split into b buckets of 16 / b log-linear sub-buckets each;
- above, only +Inf.

Each `le` is the last integer microsecond of its bucket plus ½ µs. The agent records
whole microseconds, so no sample sits between two bounds, and Prometheus' linear
interpolation over [previous le, le] is centred on the agent's own bucket midpoint: at
b = 16 the exported bucket is the log-linear one. Hence, for a quantile the agent puts
at or above 64 µs and below the top bound, `histogram_quantile` over these buckets is
within `error_bound(b)` = (2·16/b - 1) / 32 of the agent's quantile (b = 16: 1/32,
3.125 %; b = 8: 9.4 %; b = 4: 22 %): both lie in the same exported bucket, the agent's
at least half a sub-bucket from its ends, and a sub-bucket's lower bound is at least 16
times its width. Outside that range the estimate is only the range's edge.
"""

from __future__ import annotations

from bisect import bisect_left

from aviator.latency.histogram import (
    SUB_BITS,
    Histogram,
    bucket_index,
    bucket_lower,
    bucket_width,
)

PER_OCTAVE_CHOICES = (1, 2, 4, 8, 16)
DEFAULT_PER_OCTAVE = 16
MIN_EXP = 6  # exported octaves start at 2^6 µs = 64 µs
TOP_EXP = 24  # and end at 2^24 µs ≈ 16.8 s
_SUB = 1 << SUB_BITS


def error_bound(per_octave: int) -> float:
    """Largest relative gap between histogram_quantile over the exported buckets and the
    agent's own quantile, for quantiles inside the exported range (module docstring)."""
    _check(per_octave)
    return (2 * (_SUB // per_octave) - 1) / 32


def series_per_endpoint(per_octave: int) -> int:
    """Series one exported histogram costs: its finite buckets, +Inf, _sum, _count."""
    return len(BucketLayout(per_octave).le_us) + 3


def _check(per_octave: int) -> None:
    if per_octave not in PER_OCTAVE_CHOICES:
        raise ValueError(f"buckets per octave must be one of {PER_OCTAVE_CHOICES}")


class BucketLayout:
    """The exported bounds for one `per_octave`, and the fold into them."""

    __slots__ = ("_last_index", "labels", "le_us", "per_octave")

    def __init__(self, per_octave: int = DEFAULT_PER_OCTAVE) -> None:
        _check(per_octave)
        self.per_octave = per_octave
        step = _SUB // per_octave
        # Last log-linear bucket index of each exported bucket, ascending.
        first = bucket_index(1 << MIN_EXP)
        top = bucket_index(1 << TOP_EXP)
        self._last_index = [first - 1, *range(first + step - 1, top, step)]
        # le = last integer µs of the exported bucket + ½ (see the module docstring).
        self.le_us = [bucket_lower(i) + bucket_width(i) - 0.5 for i in self._last_index]
        self.labels = [_seconds(le) for le in self.le_us]

    def fold(self, hist: Histogram) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, ending with ("+Inf", total)."""
        counts = [0] * len(self._last_index)
        last = self._last_index
        for idx, n in hist.items():
            slot = bisect_left(last, idx)
            if slot < len(counts):  # beyond the top bound: only in +Inf
                counts[slot] += n
        out: list[tuple[str, float]] = []
        running = 0
        for label, n in zip(self.labels, counts, strict=True):
            running += n
            out.append((label, float(running)))
        out.append(("+Inf", float(hist.count)))
        return out


def _seconds(le_us: float) -> str:
    """A bound in seconds, written exactly (le_us is a whole or half microsecond)."""
    whole, half = divmod(round(le_us * 2), 2)
    text = f"{whole // 1_000_000}.{whole % 1_000_000:06d}{'5' if half else ''}"
    return text.rstrip("0").rstrip(".")
