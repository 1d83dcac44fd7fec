"""`kubectl aviator compare`'s decision (aviator/plugin/compare.py): examples at the
edges, and properties over random pods (monotone in each margin, order-blind,
scale-free, identical groups pass, a failing canary passes when the roles swap)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.api.status import PodStatus
from aviator.plugin.compare import Outcome, compare, split_rows, summarize


def pod(
    name: str,
    p99: float | None,
    samples: int = 200,
    *,
    responses: int | None = None,
    errors: float | None = None,
    state: str = "active",
    reason: str | None = None,
) -> PodStatus:
    return PodStatus(
        name=name,
        state=state,
        p99_ms=p99,
        samples=samples if p99 is not None else 0,
        responses=responses,
        error_rate_percent=errors,
        reason=reason,
    )


STABLE = [pod("s1", 10.0), pod("s2", 10.0), pod("s3", 10.0)]


def test_within_the_margin_passes_and_beyond_it_fails() -> None:
    ok = compare([pod("c1", 10.9)], STABLE, within_percent=10)
    assert ok.outcome is Outcome.PASS and ok.outcome.exit_code == 0
    assert ok.line().startswith("PASS: canary p99 10.90 ms is within 10% of stable p99 10.00 ms")
    slow = compare([pod("c1", 11.5)], STABLE, within_percent=10)
    assert slow.outcome is Outcome.FAIL and slow.outcome.exit_code == 1
    assert slow.line() == (
        "FAIL: canary p99 11.50 ms is 15.0% above stable p99 10.00 ms (allowed: 10%)"
    )
    assert slow.to_json()["p99IncreasePercent"] == pytest.approx(15.0)


def test_a_faster_canary_passes_at_a_zero_margin() -> None:
    assert compare([pod("c1", 5.0)], STABLE, within_percent=0).outcome is Outcome.PASS


def test_group_p99_is_weighted_by_samples() -> None:
    group = summarize([pod("a", 10.0, 300), pod("b", 50.0, 100)])
    assert group.p99_ms == pytest.approx(20.0)
    assert (group.fastest_p99_ms, group.slowest_p99_ms) == (10.0, 50.0)
    assert group.measured == 2 and group.samples == 400


def test_not_enough_data_is_no_verdict() -> None:
    few = compare([pod("c1", 10.0, samples=20)], STABLE, min_samples=100)
    assert few.outcome is Outcome.NO_DATA and few.outcome.exit_code == 2
    assert "canary pods have 20 samples" in few.line()
    unmeasured = compare([pod("c1", None)], STABLE)
    assert unmeasured.outcome is Outcome.NO_DATA
    assert "(0 of 1 pods measured; need 100)" in unmeasured.line()
    assert compare([], STABLE).outcome is Outcome.NO_DATA
    assert "no stable pods" in compare([pod("c1", 10.0)], []).line()


def test_error_rate_is_pooled_and_compared_in_points() -> None:
    stable = [
        pod("s1", 10.0, responses=900, errors=1.0),
        pod("s2", 10.0, responses=100, errors=0.0),
    ]
    assert summarize(stable).error_rate_percent == pytest.approx(0.9)
    same = compare([pod("c1", 10.0, responses=200, errors=1.5)], stable, max_error_increase=1)
    assert same.outcome is Outcome.PASS and "error rate 1.50% vs 0.90%" in same.line()
    worse = compare([pod("c1", 10.0, responses=200, errors=2.5)], stable, max_error_increase=1)
    assert worse.outcome is Outcome.FAIL
    assert "canary error rate 2.50% exceeds stable 0.90% by 1.60 points" in worse.line()


def test_error_rate_unknown_is_a_note_not_a_verdict() -> None:
    verdict = compare([pod("c1", 10.0, responses=20, errors=50.0)], STABLE)
    assert verdict.outcome is Outcome.PASS
    assert verdict.notes and "error rate not compared" in verdict.notes[0]
    assert verdict.to_json()["stable"]["errorRatePercent"] is None


def test_an_ejected_canary_pod_fails() -> None:
    canary = [pod("c1", 10.0), pod("c2", None, state="ejected", reason="P99AboveThreshold")]
    verdict = compare(canary, STABLE)
    assert verdict.outcome is Outcome.FAIL
    assert "canary pod c2 is ejected by the circuit breaker (P99AboveThreshold)" in verdict.line()


def test_split_rows_by_name() -> None:
    canary, stable = split_rows([pod("a", 1.0), pod("b", 1.0), pod("c", 1.0)], {"b", "x"})
    assert [r.name for r in canary] == ["b"] and [r.name for r in stable] == ["a", "c"]


def test_margins_are_checked() -> None:
    with pytest.raises(ValueError):
        compare(STABLE, STABLE, within_percent=-1)
    with pytest.raises(ValueError):
        compare(STABLE, STABLE, min_samples=0)


# -- properties --------------------------------------------------------------------------

# p99s are multiples of 1/8 ms and scales powers of two, so scaling is exact in floats.
P99 = st.integers(min_value=1, max_value=8000).map(lambda n: n / 8)


@st.composite
def pods(draw: st.DrawFn, prefix: str) -> list[PodStatus]:
    n = draw(st.integers(min_value=0, max_value=5))
    out = []
    for i in range(n):
        measured = draw(st.booleans()) or i == 0
        responses = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2000)))
        out.append(
            pod(
                f"{prefix}{i}",
                draw(P99) if measured else None,
                draw(st.integers(min_value=1, max_value=500)),
                responses=responses,
                errors=draw(st.floats(min_value=0, max_value=100)) if responses else None,
                state=draw(st.sampled_from(["active", "active", "standby", "ejected"])),
            )
        )
    return out


MARGIN = st.floats(min_value=0, max_value=500, allow_nan=False)
MIN_SAMPLES = st.integers(min_value=1, max_value=600)


@settings(max_examples=300, deadline=None)
@given(pods("c"), pods("s"), MARGIN, MARGIN, MARGIN, MIN_SAMPLES)
def test_verdict_is_monotone_in_the_margins(
    canary: list[PodStatus],
    stable: list[PodStatus],
    within: float,
    wider: float,
    errors: float,
    min_samples: int,
) -> None:
    lo, hi = sorted([within, wider])
    strict = compare(
        canary, stable, within_percent=lo, max_error_increase=errors, min_samples=min_samples
    )
    loose = compare(
        canary, stable, within_percent=hi, max_error_increase=errors, min_samples=min_samples
    )
    # whether there is a verdict never depends on a margin
    assert (strict.outcome is Outcome.NO_DATA) == (loose.outcome is Outcome.NO_DATA)
    if strict.outcome is Outcome.PASS:
        assert loose.outcome is Outcome.PASS
    if loose.outcome is Outcome.FAIL:
        assert strict.outcome is Outcome.FAIL
    e_strict = compare(
        canary, stable, within_percent=within, max_error_increase=lo, min_samples=min_samples
    )
    e_loose = compare(
        canary, stable, within_percent=within, max_error_increase=hi, min_samples=min_samples
    )
    if e_strict.outcome is Outcome.PASS:
        assert e_loose.outcome is Outcome.PASS


@settings(max_examples=200, deadline=None)
@given(
    pods("c"),
    pods("s"),
    MARGIN,
    st.randoms(use_true_random=False),
    st.sampled_from([0.25, 0.5, 2.0, 4.0]),
)
def test_verdict_ignores_pod_order_and_the_unit_of_time(
    canary: list[PodStatus], stable: list[PodStatus], within: float, rnd: object, scale: float
) -> None:
    base = compare(canary, stable, within_percent=within)
    shuffled_c, shuffled_s = list(canary), list(stable)
    rnd.shuffle(shuffled_c)  # type: ignore[attr-defined]
    rnd.shuffle(shuffled_s)  # type: ignore[attr-defined]
    assert compare(shuffled_c, shuffled_s, within_percent=within).outcome is base.outcome

    def scaled(rows: list[PodStatus]) -> list[PodStatus]:
        return [
            dataclasses.replace(r, p99_ms=None if r.p99_ms is None else r.p99_ms * scale)
            for r in rows
        ]

    assert compare(scaled(canary), scaled(stable), within_percent=within).outcome is base.outcome


@settings(max_examples=200, deadline=None)
@given(pods("s"), MARGIN, MIN_SAMPLES)
def test_a_canary_like_the_stable_pods_passes(
    stable: list[PodStatus], within: float, min_samples: int
) -> None:
    serving = [dataclasses.replace(r, state="active") for r in stable]
    twins = [dataclasses.replace(r, name=f"twin-{r.name}") for r in serving]
    verdict = compare(twins, serving, within_percent=within, min_samples=min_samples)
    assert verdict.outcome in (Outcome.PASS, Outcome.NO_DATA)
    assert verdict.outcome is Outcome.PASS or any(
        "samples" in r or "no " in r for r in verdict.reasons
    )


@settings(max_examples=200, deadline=None)
@given(pods("c"), pods("s"), MARGIN)
def test_a_canary_too_slow_is_fast_enough_with_the_roles_swapped(
    canary: list[PodStatus], stable: list[PodStatus], within: float
) -> None:
    serving_c = [dataclasses.replace(r, state="active", responses=None) for r in canary]
    serving_s = [dataclasses.replace(r, state="active", responses=None) for r in stable]
    verdict = compare(serving_c, serving_s, within_percent=within)
    if verdict.outcome is Outcome.FAIL:  # only p99 can fail it here
        assert compare(serving_s, serving_c, within_percent=within).outcome is Outcome.PASS
