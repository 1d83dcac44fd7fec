"""kstatus' rules for a custom resource it has no specific rule for (pure), so tests
can check how Flux, kpt and cli-utils (sigs.k8s.io/cli-utils/pkg/kstatus) read an
AviatorPolicy. In order (cli-utils pkg/kstatus/status: Compute,
checkGenericProperties, checkReadyCondition):

1. `metadata.deletionTimestamp` set -> Terminating;
2. `status.observedGeneration` set and != `metadata.generation` -> InProgress;
3. a `Reconciling=True` condition -> InProgress; `Stalled=True` -> Failed;
4. the `Ready` condition: True -> Current; False or Unknown -> InProgress;
5. otherwise Current.

test/integration/test_kstatus_real.py checks these against the library itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def kstatus(obj: Mapping[str, Any]) -> str:
    """InProgress, Failed, Current or Terminating, as kstatus' Compute says."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress"
    conditions = status.get("conditions") or []
    for c in conditions:
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            return "InProgress"
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return "Failed"
    for c in conditions:
        if c.get("type") == "Ready":
            if c.get("status") == "True":
                return "Current"
            if c.get("status") in ("False", "Unknown"):
                return "InProgress"
    return "Current"
