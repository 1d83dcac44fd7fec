"""Go-style durations: exact parsing, Go's formatting, and clear refusals."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.api.durations import (
    DURATION_PATTERN,
    MAX_NS,
    Duration,
    DurationError,
    format_duration,
    parse_duration,
    parse_duration_ns,
)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("0s", 0),
        ("100ms", 100_000_000),
        ("5s", 5_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5s", 1_500_000_000),
        ("2h", 7_200_000_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("1.5µs", 1_500),
        ("1.5μs", 1_500),  # Greek mu, as Go accepts
        ("0.000000001s", 1),
        ("0.0000000019s", 1),  # below a nanosecond truncates, like Go
        ("2562047h47m16.854775807s", MAX_NS),
    ],
)
def test_parse_examples(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns
    assert re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5µs"),
        (100_000_000, "100ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_004_005_006, "1h2m3.004005006s"),
        (MAX_NS, "2562047h47m16.854775807s"),
    ],
)
def test_format_is_go_duration_string(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("-1s", "must not be negative"),
        ("-0s", "must not be negative"),
        ("", "must not be empty"),
        ("5 seconds", "invalid duration '5 seconds'"),
        ("5", "invalid duration"),
        ("s", "invalid duration"),
        ("1.s", "invalid duration"),
        (".5s", "invalid duration"),
        ("+5s", "invalid duration"),
        ("5S", "invalid duration"),
        ("1d", "invalid duration"),
        (" 5s", "invalid duration"),
        ("5s ", "invalid duration"),
        ("2562047h47m16.854775808s", "too long"),
        ("1" * 70 + "s", "longer than"),
    ],
)
def test_refusals_say_why(text: str, fragment: str) -> None:
    with pytest.raises(DurationError, match=re.escape(fragment)):
        parse_duration_ns(text)
    if fragment != "too long":
        assert not re.fullmatch(DURATION_PATTERN, text) or len(text) > 64


def test_not_a_string() -> None:
    with pytest.raises(DurationError, match="must be a string"):
        parse_duration_ns(5)  # type: ignore[arg-type]


def test_duration_value() -> None:
    d = Duration.parse("1.5s")
    assert d.seconds == 1.5
    assert d.milliseconds == 1500.0
    assert str(d) == "1.5s"
    assert Duration.from_seconds(0.2) == parse_duration("200ms")
    assert Duration.parse("200ms") < Duration.parse("1s")
    with pytest.raises(DurationError):
        Duration(-1)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=MAX_NS))
def test_format_then_parse_round_trips(ns: int) -> None:
    text = format_duration(ns)
    assert parse_duration_ns(text) == ns
    assert re.fullmatch(DURATION_PATTERN, text)


_unit = st.sampled_from(["ns", "us", "µs", "ms", "s", "m", "h"])
_term = st.tuples(
    st.integers(min_value=0, max_value=999), st.none() | st.integers(0, 999_999), _unit
).map(lambda t: f"{t[0]}{'' if t[1] is None else f'.{t[1]}'}{t[2]}")


@settings(max_examples=300)
@given(st.lists(_term, min_size=1, max_size=4).map("".join))
def test_any_valid_text_parses_and_normalises(text: str) -> None:
    ns = parse_duration_ns(text)
    # The normal form means the same span and is itself stable.
    assert parse_duration_ns(format_duration(ns)) == ns
    assert format_duration(parse_duration_ns(format_duration(ns))) == format_duration(ns)


@settings(max_examples=300)
@given(st.text(max_size=12))
def test_parser_and_schema_pattern_agree(text: str) -> None:
    """What the CRD's pattern admits, the parser accepts (bar overflow), and vice versa."""
    try:
        parse_duration_ns(text)
        accepted = True
    except DurationError as exc:
        accepted = "too long" in str(exc)
    assert accepted == bool(re.fullmatch(DURATION_PATTERN, text))
