"""The reaction bench's accounting: when the first request reached the victim, and
which failures no routing could save (sent before the victim could be known slow),
which are the reaction's (before it left the slices) and which came after."""

from __future__ import annotations

from bench.common import Sample
from bench.reaction_bench import _failures, _first_hit, _time_below

ONSET = 100.0


def sample(at: float, ok: bool, served_by: str | None, latency_s: float = 0.01) -> Sample:
    return Sample(ONSET + at, latency_s if ok else 1.0, ok, served_by)


def test_first_hit_counts_timeouts_on_unknown_pods_as_the_victims() -> None:
    samples = [
        sample(-0.5, True, "victim"),  # before the onset
        sample(0.1, True, "other"),
        sample(0.3, False, None),  # a new connection that timed out: the victim's
        sample(0.4, False, "victim"),
    ]
    got = _first_hit(samples, "victim", ONSET)
    assert got is not None and abs(got - 0.3) < 1e-9
    assert _first_hit([sample(0.2, True, "other")], "victim", ONSET) is None


def test_failures_are_split_by_when_they_were_due() -> None:
    samples = [
        sample(-0.5, False, "victim"),  # in flight at the onset (ends at +0.5)
        sample(-2.0, False, None),  # ended before the onset: not the episode's
        sample(0.2, False, None),
        sample(0.6, False, "victim"),  # a kept-alive connection to it, before known (0.7)
        sample(0.8, False, None),  # known slow (0.7), not yet out (1.0)
        sample(1.5, False, "other"),  # after the removal
        sample(1.6, True, "other"),
    ]
    note = _failures(samples, "victim", ONSET, known=0.7, removed=1.0, end=ONSET + 60)
    assert "-0.50 v, +0.20 ?, +0.60 v, +0.80 ?, +1.50 other" in note
    assert (
        "1 in flight at the onset, 2 sent before the victim could be known slow "
        "(first request + p99Threshold), 1 before it left the slices, 1 after"
    ) in note
    assert _failures([sample(1.0, True, "x")], "victim", ONSET, 0.7, 1.0, ONSET + 60) == (
        "no failures"
    )


def test_time_below_is_the_start_of_the_bin_after_the_last_with_victim_traffic() -> None:
    samples = [sample(t / 10, True, "other") for t in range(50)]
    samples += [sample(0.5, False, None), sample(2.5, True, "victim")]
    assert _time_below(samples, "victim", ONSET, ONSET + 5) == 3.0
    # Still reaching the victim in the last bin: never below.
    samples.append(sample(4.5, True, "victim"))
    assert _time_below(samples, "victim", ONSET, ONSET + 5) is None
