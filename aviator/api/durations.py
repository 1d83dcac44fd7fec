"""Go-style durations ("100ms", "5s", "1m30s", "1.5s"), as Kubernetes users write them.

The accepted syntax is a subset of Go's `time.ParseDuration` (so the API server's CEL
`duration()` understands every value we accept): either the bare `0`, or one or more
`<digits>[.<digits>]<unit>` terms with unit ns, us (or µs), ms, s, m or h. Signs are
refused: a negative interval or threshold never makes sense in a policy. The value
must fit in Go's int64 nanoseconds, like a `time.Duration`.

`format_duration` is Go's `Duration.String()`, so the two round-trip exactly for any
whole number of nanoseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
MAX_NS = (1 << 63) - 1  # Go's time.Duration is an int64 of nanoseconds

UNITS: dict[str, int] = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign, what Go prints
    "\u03bcs": MICROSECOND,  # Greek small mu, which Go also accepts
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}

_UNIT_ALTERNATION = "ns|us|\u00b5s|\u03bcs|ms|s|m|h"
# The schema pattern (Go/RE2 and Python agree on this syntax).
DURATION_PATTERN = rf"^(0|([0-9]+(\.[0-9]+)?({_UNIT_ALTERNATION}))+)$"
MAX_DURATION_LENGTH = 64

_WHOLE = re.compile(DURATION_PATTERN)
_TERM = re.compile(rf"([0-9]+)(?:\.([0-9]+))?({_UNIT_ALTERNATION})")

_EXAMPLES = "e.g. 100ms, 5s, 1m30s or 1.5s"


class DurationError(ValueError):
    """Text that is not a valid non-negative duration; the message says why."""


@dataclass(frozen=True, order=True, slots=True)
class Duration:
    """A non-negative span of time, held exactly in nanoseconds."""

    ns: int

    def __post_init__(self) -> None:
        if not 0 <= self.ns <= MAX_NS:
            raise DurationError(f"duration of {self.ns}ns is outside 0..{MAX_NS}ns")

    @classmethod
    def parse(cls, text: str) -> Duration:
        return cls(parse_duration_ns(text))

    @classmethod
    def from_seconds(cls, seconds: float) -> Duration:
        return cls(round(seconds * SECOND))

    @property
    def seconds(self) -> float:
        return self.ns / SECOND

    @property
    def milliseconds(self) -> float:
        return self.ns / MILLISECOND

    def __str__(self) -> str:
        return format_duration(self.ns)


def parse_duration_ns(text: str) -> int:
    """Nanoseconds in `text`; raises DurationError with a message fit for a user."""
    if not isinstance(text, str):
        raise DurationError(f"a duration must be a string ({_EXAMPLES}), got {text!r}")
    if text == "":
        raise DurationError(f"a duration must not be empty ({_EXAMPLES})")
    if text.startswith("-"):
        raise DurationError(f"duration {text!r} must not be negative")
    if len(text) > MAX_DURATION_LENGTH:
        raise DurationError(f"duration {text[:20]!r}... is longer than {MAX_DURATION_LENGTH}")
    if not _WHOLE.fullmatch(text):
        raise DurationError(
            f"invalid duration {text!r}: expected numbers with units ns, us, ms, s, m "
            f"or h ({_EXAMPLES})"
        )
    if text == "0":
        return 0
    total = 0
    for whole, frac, unit in _TERM.findall(text):
        scale = UNITS[unit]
        total += int(whole) * scale
        if frac:
            # Exact, truncating below a nanosecond like Go does.
            total += int(frac) * scale // 10 ** len(frac)
        if total > MAX_NS:
            raise DurationError(f"duration {text!r} is too long (the maximum is about 2562047h)")
    return total


def parse_duration(text: str) -> Duration:
    return Duration(parse_duration_ns(text))


def _fraction(value: int, digits: int) -> str:
    """`value` / 10**digits printed without trailing zeros (Go's fmtFrac + fmtInt)."""
    whole, frac = divmod(value, 10**digits)
    if frac == 0:
        return str(whole)
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"


def format_duration(ns: int) -> str:
    """Go's `time.Duration.String()` for a non-negative number of nanoseconds."""
    if ns < 0:
        raise DurationError(f"duration of {ns}ns must not be negative")
    if ns == 0:
        return "0s"
    if ns < MICROSECOND:
        return f"{ns}ns"
    if ns < MILLISECOND:
        return _fraction(ns, 3) + "\u00b5s"
    if ns < SECOND:
        return _fraction(ns, 6) + "ms"
    hours, rest = divmod(ns, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    seconds = _fraction(rest, 9) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds
