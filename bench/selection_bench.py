"""Selection engine throughput: evaluations per second by pod count, and its scaling.

Each evaluation runs the full pipeline (breaker on, dampening on, percentage mode) on
a steady Service where 5 % of the pods are slow, carrying the state forward as the
reconciler does. The scaling row compares time(10k) / time(1k) with the n log n
expectation 10 x log(10k) / log(1k) (ratio <= ~1 means n log n or better).
"""

from __future__ import annotations

import math
import random
import time

from aviator.selection import (
    BreakerPolicy,
    DampeningPolicy,
    EngineState,
    LatencyEstimate,
    Mode,
    PodInput,
    SelectionPolicy,
    evaluate,
)

Row = dict[str, object]

POLICY = SelectionPolicy(
    mode=Mode.PERCENTAGE,
    percentage=50,
    breaker=BreakerPolicy(enabled=True, p99_threshold_ms=500.0, consecutive_violations=3),
    dampening=DampeningPolicy(enabled=True, threshold_percent=20, consecutive_intervals=3),
)


def make_pods(n: int, seed: int = 1) -> list[PodInput]:
    rnd = random.Random(seed)
    pods = []
    for i in range(n):
        slow = rnd.random() < 0.05
        p99 = rnd.uniform(600.0, 900.0) if slow else rnd.uniform(5.0, 50.0)
        pods.append(
            PodInput(
                name=f"pod-{i:05d}",
                ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                node=f"node-{i % 50}",
                created=float(i),
                latency=LatencyEstimate(p99 / 3, p99, rif=rnd.randint(0, 8), samples=100),
            )
        )
    return pods


def seconds_per_evaluation(n: int, min_time_s: float, min_runs: int) -> float:
    """Mean time of evaluations repeated on a settled state (after warm-up)."""
    pods = make_pods(n)
    state, active = EngineState(), frozenset[str]()
    now = 0.0
    for _ in range(4):  # settle: ejections done, dampening idle
        ev = evaluate(pods, active, POLICY, state, now)
        state, active, now = ev.state, ev.active, now + 5.0
    runs = 0
    start = time.perf_counter()
    elapsed = 0.0
    while runs < min_runs or elapsed < min_time_s:
        ev = evaluate(pods, active, POLICY, state, now)
        state, active, now = ev.state, ev.active, now + 5.0
        runs += 1
        elapsed = time.perf_counter() - start
    return elapsed / runs


def run(quick: bool) -> list[Row]:
    sizes = [10, 1_000, 10_000]
    min_time_s, min_runs = (0.05, 2) if quick else (1.0, 5)
    if quick:
        sizes = [10, 100, 1_000]
    rows: list[Row] = []
    per_eval: dict[int, float] = {}
    for n in sizes:
        t = seconds_per_evaluation(n, min_time_s, min_runs)
        per_eval[n] = t
        row: Row = {
            "benchmark": "selection",
            "metric": f"evaluations/s, {n} pods",
            "value": 1.0 / t,
            "unit": "1/s",
            "note": f"{t * 1e3:.3f} ms per evaluation",
        }
        rows.append(row)
    small, large = sizes[-2], sizes[-1]
    expected = (large / small) * math.log(large) / math.log(small)
    observed = per_eval[large] / per_eval[small]
    rows.append(
        {
            "benchmark": "selection",
            "metric": f"time({large}) / time({small}) vs n log n",
            "value": observed,
            "unit": "x",
            "ratio": observed / expected,
            "goal": "ratio <= 1.5 (n log n)",
            "note": f"n log n predicts {expected:.2f}x",
        }
    )
    if not quick:
        t5k = seconds_per_evaluation(5_000, min_time_s, min_runs)
        rows.append(
            {
                "benchmark": "selection",
                "metric": "one evaluation, 5000 pods",
                "value": t5k * 1e3,
                "unit": "ms",
                "ratio": t5k / 0.100,
                "goal": "<= 100 ms (ratio <= 1)",
            }
        )
    return rows
