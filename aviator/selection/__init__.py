"""Pure selection engine: which pods of a Service should serve (docs/selection.md; ARCHITECTURE.md places it).

`evaluate(pods, current_active, policy, state, now) -> Evaluation` is the whole API;
the reconciler builds `PodInput`s from the Pod cache and the latency store, and keeps
`Evaluation.state.to_dict()` in the policy status between evaluations.
"""

from aviator.selection.engine import Evaluation, evaluate, known_latency
from aviator.selection.state import (
    STATE_VERSION,
    BreakerRecord,
    BreakerStatus,
    DampeningState,
    EngineState,
)
from aviator.selection.types import (
    BreakerPolicy,
    Conditions,
    DampeningPolicy,
    Decision,
    DecisionKind,
    LatencyEstimate,
    LoadCombine,
    Mode,
    PodInput,
    PodState,
    PodVerdict,
    Reason,
    SelectionPolicy,
)

__all__ = [
    "STATE_VERSION",
    "BreakerPolicy",
    "BreakerRecord",
    "BreakerStatus",
    "Conditions",
    "DampeningPolicy",
    "DampeningState",
    "Decision",
    "DecisionKind",
    "EngineState",
    "Evaluation",
    "LatencyEstimate",
    "LoadCombine",
    "Mode",
    "PodInput",
    "PodState",
    "PodVerdict",
    "Reason",
    "SelectionPolicy",
    "evaluate",
    "known_latency",
]
