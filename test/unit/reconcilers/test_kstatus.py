"""AviatorPolicy's status read by kstatus (sigs.k8s.io/cli-utils/pkg/kstatus), the
library Flux, kpt and cli-utils' apply use to decide whether a custom resource is
reconciled. `aviator.testing.kstatus` holds its rules (checked against the library
itself in test/integration/test_kstatus_real.py); these tests feed it what the
controller writes (`build_status`), so a status change that makes a routing policy
look unreconciled to these tools (or a broken one look Current) fails here.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aviator.reconcilers.status import (
    BLOCKING,
    REASON_NO_LATENCY_DATA,
    REASON_OVERLOAD,
    REASON_SELECTOR_RESTORED,
    Observation,
    Problem,
    build_status,
)
from aviator.testing.kstatus import kstatus

JSON = dict[str, Any]


def policy(generation: int, problems: list[Problem], observed: int | None = None) -> JSON:
    obs = Observation(
        generation=generation if observed is None else observed,
        now_iso="2026-01-01T00:00:00Z",
        active=2,
        total=4,
        source="ebpf",
        problems=problems,
        routed_service="web-aviator",
    )
    return {
        "metadata": {"name": "p", "namespace": "shop", "generation": generation},
        "status": build_status(obs, {}).to_dict(),
    }


DEGRADING = (REASON_NO_LATENCY_DATA, REASON_OVERLOAD, REASON_SELECTOR_RESTORED)


def test_routing_policy_is_current() -> None:
    assert kstatus(policy(3, [])) == "Current"


def test_degraded_but_routing_is_current() -> None:
    """Degraded problems (no data yet, overload, a restored selector) do not hold up a
    rollout: the policy routes."""
    for reason in DEGRADING:
        assert kstatus(policy(3, [Problem(reason, "x")])) == "Current", reason


def test_blocking_problem_is_in_progress() -> None:
    for reason in BLOCKING:
        assert kstatus(policy(3, [Problem(reason, "x")])) == "InProgress", reason


def test_new_generation_not_yet_observed_is_in_progress() -> None:
    assert kstatus(policy(4, [], observed=3)) == "InProgress"


def test_deleted_policy_is_terminating() -> None:
    obj = policy(3, [])
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert kstatus(obj) == "Terminating"


def test_no_status_yet_reads_current() -> None:
    """kstatus' documented corner case: before the controller's first status write
    nothing says the policy uses Ready. Tools that must wait for routing should wait
    for the condition itself (`kubectl wait --for=condition=Ready avp/NAME`)."""
    assert kstatus({"metadata": {"generation": 1}}) == "Current"


@given(
    reasons=st.lists(st.sampled_from([*BLOCKING, *DEGRADING]), unique=True),
    generation=st.integers(1, 10),
    lag=st.integers(0, 2),
)
def test_current_exactly_when_routing_the_latest_generation(
    reasons: list[str], generation: int, lag: int
) -> None:
    obj = policy(generation + lag, [Problem(r, r) for r in reasons], observed=generation)
    blocked = any(r in BLOCKING for r in reasons)
    assert (kstatus(obj) == "Current") == (not blocked and lag == 0)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    # Ready speaks for the generation the status reflects (kstatus' generation rule
    # and the condition agree).
    assert ready["observedGeneration"] == obj["status"]["observedGeneration"]
