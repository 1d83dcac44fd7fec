"""AviatorPolicy read by the real kstatus (sigs.k8s.io/cli-utils, built from Go modules
into bin/kstatus by `make tools`): what the controller writes on the real control
plane reads Current while it routes and InProgress while it cannot; and the unit
tests' reimplementation of kstatus' rules (aviator.testing.kstatus, used by test/unit/reconcilers/test_kstatus.py)
agrees with the library on every status `build_status` makes."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from integration_support import (
    create_policy,
    create_service_and_pods,
    eventually,
    get_policy,
    running_controller,
)

from aviator.api.types import API_VERSION, KIND
from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES
from aviator.reconcilers.status import (
    BLOCKING,
    REASON_NO_LATENCY_DATA,
    REASON_OVERLOAD,
    REASON_SELECTOR_RESTORED,
    Observation,
    Problem,
    build_status,
)
from aviator.testing.controlplane import ControlPlane
from aviator.testing.kstatus import kstatus

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

ROOT = Path(__file__).resolve().parents[2]

JSON = dict[str, Any]


def real_kstatus(objects: list[JSON]) -> list[str]:
    path = ROOT / "bin" / "kstatus"
    if not path.exists():
        pytest.fail("bin/kstatus is missing: run `make tools`")
    out = subprocess.run(
        [str(path)], input=json.dumps(objects), capture_output=True, text=True, check=True
    )
    return [json.loads(line)["status"] for line in out.stdout.splitlines()]


def test_the_rules_the_unit_tests_use_are_kstatus() -> None:
    cases: list[JSON] = []
    reasons = [*BLOCKING, REASON_NO_LATENCY_DATA, REASON_OVERLOAD, REASON_SELECTOR_RESTORED]
    for n in range(3):
        for problems in itertools.combinations(reasons, n):
            for lag, deleted in itertools.product((0, 1), (False, True)):
                obs = Observation(
                    generation=3,
                    now_iso="2026-01-01T00:00:00Z",
                    active=1,
                    total=2,
                    problems=[Problem(r, r) for r in problems],
                    routed_service="web-aviator",
                )
                meta: JSON = {"name": "p", "namespace": "shop", "generation": 3 + lag}
                if deleted:
                    meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                status = build_status(obs, {}).to_dict()
                cases.append(
                    {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "status": status}
                )
    cases.append(
        {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "new", "generation": 1}}
    )
    assert real_kstatus(cases) == [kstatus(c) for c in cases]


async def test_what_the_controller_writes_reads_right(
    control_plane: ControlPlane, kube: KubeClient, namespace: str
) -> None:
    ns = namespace
    await create_service_and_pods(kube, ns, "web", {"app": "web"}, {"web-1": "10.50.0.1"})
    async with running_controller(control_plane, ns):
        await create_policy(kube, ns, "routes", "web", evaluationInterval="500ms")
        await create_policy(kube, ns, "blocked", "missing", evaluationInterval="500ms")

        async def statuses() -> list[str] | None:
            policies = [await get_policy(kube, ns, n) or {} for n in ("routes", "blocked")]
            if not all((p.get("status") or {}).get("conditions") for p in policies):
                return None
            return real_kstatus(policies)

        assert await eventually(statuses, within=60) == ["Current", "InProgress"]

        # A new spec reads InProgress until the controller has observed it, then Current.
        await kube.patch(
            AVIATORPOLICIES,
            "routes",
            {"spec": {"minEndpoints": 1, "evaluationInterval": "600ms"}},
            ns,
        )

        async def caught_up() -> bool:
            policy = await get_policy(kube, ns, "routes") or {}
            observed = (policy.get("status") or {}).get("observedGeneration")
            state = real_kstatus([policy])[0]
            if observed != policy["metadata"]["generation"]:
                assert state == "InProgress"
                return False
            return state == "Current"

        await eventually(caught_up, within=60)
