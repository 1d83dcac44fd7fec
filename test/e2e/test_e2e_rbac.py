"""Every API request the controller and the agents made during the e2e run was allowed
by the RBAC of config/rbac (the box runs them as their own ServiceAccounts), read from
the API server's audit log. Collected last (see conftest.py), after every scenario."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from e2e_cluster import BoxCluster, Cluster

from aviator.testing.controlplane import AVIATOR_SERVICE_ACCOUNTS

pytestmark = pytest.mark.e2e


def _audit_events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") in AVIATOR_SERVICE_ACCOUNTS:
            events.append(event)
    return events


def test_every_request_of_aviator_was_allowed(aviator_cluster: Cluster) -> None:
    if not isinstance(aviator_cluster, BoxCluster):
        pytest.skip("the audit log is read from the box's own API server")
    workdir = aviator_cluster.status(fresh=True).get("controlplane", {}).get("workdir")
    assert workdir, "the box status names no control plane workdir"
    audit = Path(workdir) / "audit.log"
    # The API server writes audit events in batches of at most one second.
    deadline = time.monotonic() + 10
    events = _audit_events(audit)
    while time.monotonic() < deadline and len({e["user"]["username"] for e in events}) < 2:  # type: ignore[index]
        time.sleep(0.5)
        events = _audit_events(audit)
    users = Counter(e["user"]["username"] for e in events)  # type: ignore[index]
    assert set(users) == set(AVIATOR_SERVICE_ACCOUNTS), f"requests seen per identity: {users}"
    denied = [
        f"{e['user']['username']} {e['verb']} {e['requestURI']}"  # type: ignore[index]
        for e in events
        # Only the authorizer's verdict counts: admission may also answer 403 (e.g. an
        # Event for a namespace that a test is deleting), which is not RBAC's doing.
        if e.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"  # type: ignore[union-attr]
    ]
    assert not denied, "RBAC denied requests Aviator made:\n" + "\n".join(denied)
    writes = [e for e in events if e["verb"] in ("create", "update", "patch", "delete")]
    assert any("endpointslices" in str(e["requestURI"]) for e in writes), (
        "the controller wrote no EndpointSlice under its own identity"
    )
