"""Log-linear latency histograms in microseconds, shared by the BPF program and Python.

Layout (the BPF program computes the same index, so it must never change; its constants
are those of bpf/latency.h, the BPF side's one copy, and the agent refuses a program
whose header differs, as does a unit test):

- values below 16 µs have one bucket each (index = value);
- above, every power of two [2^e, 2^(e+1)) is split into 16 equal sub-buckets:
  e = floor(log2(v)), sub = (v >> (e - 4)) & 15, index = (e - 3) * 16 + sub;
- index 463 (e = 31) is the last bucket; values of 2^32 µs (about 71 minutes) and more
  saturate into it.

A bucket of width w starts at a lower bound of at least 16 w, so reporting its midpoint
is within 1/32 (3.125 %) of any value inside it. Histograms merge by adding counts,
which is exact, associative and commutative: per-window deltas, per-pod windows and
service-wide views are all just sums.

Counts are kept sparse (bucket index → count, zero buckets absent) because real
latency distributions touch a few dozen of the 464 buckets; merging thousands of pods
per evaluation then costs what the data holds, not 464 times the pods.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import accumulate

# The scheme's constants: HIST_SUB_BITS, HIST_MAX_EXP and NUM_BUCKETS of bpf/latency.h.
# This module needs no BPF files (the controller has none), so they are checked against
# the header rather than read from it (aviator/agent/bpf/abi.py).
SUB_BITS = 4  # 2^4 = 16 linear sub-buckets per power of two
MAX_EXP = 31  # the last power of two with buckets of its own: (31 - 3) * 16 + 15 == 463
NUM_BUCKETS = (MAX_EXP - SUB_BITS + 2) << SUB_BITS
_SUB = 1 << SUB_BITS
_LAST = NUM_BUCKETS - 1


def bucket_index(value_us: int) -> int:
    """The bucket holding `value_us` (negative values are refused)."""
    if value_us < _SUB:
        if value_us < 0:
            raise ValueError(f"latency must be >= 0, got {value_us}")
        return int(value_us)
    e = int(value_us).bit_length() - 1
    if e > MAX_EXP:
        return _LAST
    return ((e - SUB_BITS + 1) << SUB_BITS) + ((value_us >> (e - SUB_BITS)) & (_SUB - 1))


def _check_index(idx: int) -> None:
    if not 0 <= idx < NUM_BUCKETS:
        raise ValueError(f"bucket index {idx} outside 0..{_LAST}")


def bucket_lower(idx: int) -> int:
    """Smallest value (µs) that falls into bucket `idx`."""
    _check_index(idx)
    if idx < _SUB:
        return idx
    return (_SUB + idx % _SUB) << ((idx >> SUB_BITS) - 1)


def bucket_width(idx: int) -> int:
    """Number of integer values (µs) bucket `idx` covers (the last one also saturates)."""
    _check_index(idx)
    if idx < _SUB:
        return 1
    return 1 << ((idx >> SUB_BITS) - 1)


def bucket_mid(idx: int) -> float:
    """Midpoint of the integer values in bucket `idx`: exact for width-1 buckets."""
    return bucket_lower(idx) + (bucket_width(idx) - 1) / 2


def quantile_rank(q: float, count: int) -> int:
    """1-based nearest rank of the q-quantile among `count` samples: ceil(q * count) >= 1.

    Rounded first so that float noise (0.07 * 100 == 7.000000000000001) does not move
    the rank by one.
    """
    return max(1, math.ceil(round(q * count, 9)))


_MIDS: tuple[float, ...] = tuple(bucket_mid(i) for i in range(NUM_BUCKETS))
# (quantiles, count) -> their ranks: windows of one policy mostly hold as many samples
# as each other, and a rank is a pure function of both.
_RANKS: dict[tuple[tuple[float, ...], int], tuple[int, ...]] = {}
_MAX_RANKS = 4096


class CounterReset(ValueError):
    """`delta` found a bucket with fewer counts than the older snapshot had."""


class Histogram:
    """A mutable latency histogram (bucket index → count, values in µs).

    `Histogram()` is empty; `Histogram(counts)` takes a dense sequence of up to
    NUM_BUCKETS counts (e.g. a BPF map row). Equality compares the distributions.
    """

    __slots__ = ("_buckets", "_count")

    def __init__(self, counts: Iterable[int] | None = None) -> None:
        self._buckets: dict[int, int] = {}
        self._count = 0
        if counts is not None:
            for idx, n in enumerate(counts):
                if n:
                    _check_index(idx)
                    if n < 0:
                        raise ValueError(f"bucket {idx} has a negative count {n}")
                    self._buckets[idx] = int(n)
                    self._count += int(n)

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_sparse(cls, data: Mapping[str, int] | Mapping[int, int]) -> Histogram:
        """From `to_sparse()` output; refuses bad indexes and negative or non-int counts."""
        h = cls()
        buckets = h._buckets
        total = 0
        for key, n in data.items():
            # Exact type checks: bool is an int subclass and must not count as one.
            if type(key) is int:
                idx = key
            elif type(key) is str and key.isdigit() and key.isascii():
                idx = int(key)
            else:
                raise ValueError(f"bucket key {key!r} is not an index")
            if not 0 <= idx < NUM_BUCKETS:
                raise ValueError(f"bucket index {idx} outside 0..{_LAST}")
            if type(n) is not int or n < 0:
                raise ValueError(f"bucket {idx} count {n!r} is not a non-negative integer")
            if n:
                buckets[idx] = buckets.get(idx, 0) + n
                total += n
        h._count = total
        return h

    @classmethod
    def from_counts(cls, buckets: dict[int, int]) -> Histogram:
        """From a bucket index → count dict whose indexes and counts the caller has
        checked (0..NUM_BUCKETS-1, counts >= 0), e.g. a typed decode's: the histogram
        takes the dict (zero buckets left out) rather than copying it."""
        h = cls()
        if 0 in buckets.values():
            buckets = {idx: n for idx, n in buckets.items() if n}
        h._buckets = buckets
        h._count = sum(buckets.values())
        return h

    @classmethod
    def from_values(cls, values_us: Iterable[int]) -> Histogram:
        h = cls()
        for v in values_us:
            h.record(v)
        return h

    @classmethod
    def merge_all(cls, hists: Iterable[Histogram]) -> Histogram:
        """Sum of many histograms in one pass (cheaper than chaining `merge`)."""
        out = cls()
        for h in hists:
            out.update(h)
        return out

    def copy(self) -> Histogram:
        h = Histogram()
        h._buckets = dict(self._buckets)
        h._count = self._count
        return h

    # --- recording and combining --------------------------------------------------

    def record(self, value_us: int, n: int = 1) -> None:
        """Add `n` observations of `value_us` microseconds."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return
        idx = bucket_index(value_us)
        self._buckets[idx] = self._buckets.get(idx, 0) + n
        self._count += n

    def update(self, other: Histogram) -> None:
        """Add `other`'s counts into this histogram (in place)."""
        buckets = self._buckets
        get = buckets.get
        for idx, n in other._buckets.items():
            buckets[idx] = get(idx, 0) + n
        self._count += other._count

    def subtract(self, other: Histogram) -> None:
        """Remove `other`'s counts from this histogram (in place), e.g. a delta leaving
        a sliding window. Raises CounterReset, changing nothing, if `other` is not
        contained in this histogram."""
        buckets = self._buckets
        for idx, n in other._buckets.items():
            if buckets.get(idx, 0) < n:
                raise CounterReset(f"bucket {idx}: cannot remove {n} from {buckets.get(idx, 0)}")
        self.remove_part(other)

    def remove_part(self, other: Histogram) -> None:
        """`subtract` of a histogram known to be contained in this one (a delta a sliding
        window added earlier), without the check: the caller vouches for it."""
        buckets = self._buckets
        for idx, n in other._buckets.items():
            left = buckets[idx] - n
            if left:
                buckets[idx] = left
            else:
                del buckets[idx]
        self._count -= other._count

    def merge(self, other: Histogram) -> Histogram:
        """A new histogram holding both distributions."""
        out = self.copy()
        out.update(other)
        return out

    __add__ = merge

    def delta(self, older: Histogram) -> Histogram:
        """What was recorded since the cumulative snapshot `older` (self - older).

        Raises CounterReset when any bucket went backwards, which for cumulative
        kernel counters means the program (and its maps) was reloaded.
        """
        out = Histogram()
        mine = self._buckets
        for idx, n in older._buckets.items():
            if mine.get(idx, 0) < n:
                raise CounterReset(f"bucket {idx} went from {n} to {mine.get(idx, 0)}")
        old = older._buckets
        for idx, n in mine.items():
            d = n - old.get(idx, 0)
            if d:
                out._buckets[idx] = d
        out._count = self._count - older._count
        return out

    __sub__ = delta

    # --- reading ------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def counts(self) -> list[int]:
        """Dense copy: NUM_BUCKETS counts, index = bucket."""
        dense = [0] * NUM_BUCKETS
        for idx, n in self._buckets.items():
            dense[idx] = n
        return dense

    def items(self) -> Iterator[tuple[int, int]]:
        """(bucket index, count) of the non-empty buckets, in index order."""
        return iter(sorted(self._buckets.items()))

    def __len__(self) -> int:
        """Number of non-empty buckets."""
        return len(self._buckets)

    def __bool__(self) -> bool:
        return self._count > 0

    def to_sparse(self) -> dict[str, int]:
        """JSON-able form: {bucket index as str: count}, empty buckets left out."""
        return {str(idx): n for idx, n in sorted(self._buckets.items())}

    def quantile(self, q: float) -> float | None:
        """The q-quantile in µs as a bucket midpoint, or None when empty.

        Nearest rank: the value of rank ceil(q * count) (at least 1), so the answer is
        the midpoint of the bucket holding that sample.
        """
        result = self.quantiles((q,))
        return None if result is None else result[0]

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """Several quantiles in one pass over the buckets (see `quantile`)."""
        total = self._count
        # Ranks of quantiles asked for before (so already checked) at this count.
        ranks = _RANKS.get((qs, total)) if type(qs) is tuple else None
        if ranks is None:
            for q in qs:
                if not 0.0 <= q <= 1.0 or math.isnan(q):
                    raise ValueError(f"quantile must be within [0, 1], got {q}")
            if total == 0:
                return None
            ranks = tuple(quantile_rank(q, total) for q in qs)
            if type(qs) is tuple:
                if len(_RANKS) >= _MAX_RANKS:
                    _RANKS.clear()
                _RANKS[qs, total] = ranks
        buckets = self._buckets
        if len(buckets) == 1:
            return [_MIDS[next(iter(buckets))]] * len(qs)
        # Cumulative counts over the sorted non-empty buckets, built and searched in C
        # (accumulate, bisect): the controller asks for thousands of pods per evaluation.
        keys = sorted(buckets)
        cumulative = list(accumulate(map(buckets.__getitem__, keys)))
        return [_MIDS[keys[bisect_left(cumulative, rank)]] for rank in ranks]

    def mean(self) -> float | None:
        """Mean of bucket midpoints (µs), None when empty."""
        if self._count == 0:
            return None
        return sum(_MIDS[i] * n for i, n in self._buckets.items()) / self._count

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self._buckets == other._buckets

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Histogram(count={self._count}, buckets={self.to_sparse()})"
