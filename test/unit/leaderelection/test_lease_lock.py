"""LeaseLock's REST protocol and the Lease spec encoding of the record."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.kube.client import ApiError
from aviator.leaderelection import LeaderElectionRecord, LeaseLock, LockConflict
from aviator.leaderelection.record import (
    lease_spec_from_record,
    micro_time,
    record_from_lease_spec,
)

JSON = dict[str, Any]
PATH = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/ctl"


class FakeLeases:
    """Just enough of the apiserver for one Lease: create, get, update with RV checks."""

    def __init__(self) -> None:
        self.lease: JSON | None = None
        self.rv = 10
        self.requests: list[tuple[str, str, Any]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
        decode: Callable[[bytes], JSON] | None = None,
    ) -> JSON:
        self.requests.append((method, path, copy.deepcopy(body)))
        if method == "GET":
            assert path == PATH
            if self.lease is None:
                raise ApiError(404, {"code": 404, "reason": "NotFound"})
            return copy.deepcopy(self.lease)
        if method == "POST":
            assert path == "/apis/coordination.k8s.io/v1/namespaces/ns/leases"
            if self.lease is not None:
                raise ApiError(409, {"code": 409, "reason": "AlreadyExists"})
            return self._store(body)
        assert method == "PUT" and path == PATH
        if self.lease is None:
            raise ApiError(404, {"code": 404, "reason": "NotFound"})
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, {"code": 409, "reason": "Conflict"})
        return self._store(body)

    def _store(self, body: JSON) -> JSON:
        self.rv += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.lease)


RECORD = LeaderElectionRecord(
    "a", 15.0, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:01.000000Z", 3
)


async def test_get_missing_then_create_then_update_with_resource_version() -> None:
    api = FakeLeases()
    lock = LeaseLock(api, "ns", "ctl", "a")
    assert await lock.get() is None
    await lock.create(RECORD)
    assert api.lease is not None
    assert api.lease["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": "2026-01-01T00:00:01.000000Z",
        "leaseTransitions": 3,
    }
    assert await lock.get() == RECORD
    await lock.update(RECORD)
    method, _, body = api.requests[-1]
    assert method == "PUT" and body["metadata"]["resourceVersion"] == "11"


async def test_conflicts_are_lost_races() -> None:
    api = FakeLeases()
    a, b = LeaseLock(api, "ns", "ctl", "a"), LeaseLock(api, "ns", "ctl", "b")
    await a.create(RECORD)
    with pytest.raises(LockConflict):
        await b.create(RECORD)  # 409 AlreadyExists
    await a.get()
    await b.get()
    await a.update(RECORD)
    with pytest.raises(LockConflict):
        await b.update(RECORD)  # b's resourceVersion is stale


async def test_other_errors_propagate_and_empty_identity_is_refused() -> None:
    class Broken(FakeLeases):
        async def request(self, method: str, path: str, **kw: Any) -> JSON:
            raise ApiError(500, {"code": 500, "message": "etcd"})

    with pytest.raises(ApiError):
        await LeaseLock(Broken(), "ns", "ctl", "a").get()
    with pytest.raises(ValueError):
        LeaseLock(FakeLeases(), "ns", "ctl", "")


def test_micro_time_format() -> None:
    stamp = micro_time()
    assert len(stamp) == len("2026-01-01T00:00:00.000000Z") and stamp.endswith("Z")


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=0, max_size=20),
    st.integers(1, 3600),
    st.integers(0, 2**31 - 1),
)
def test_record_survives_the_lease_spec(holder: str, duration: int, transitions: int) -> None:
    record = LeaderElectionRecord(holder, float(duration), "x", "y", transitions)
    assert record_from_lease_spec(lease_spec_from_record(record)) == record


def test_fractional_durations_round_up_to_whole_seconds() -> None:
    spec = lease_spec_from_record(LeaderElectionRecord("a", 0.3))
    assert spec["leaseDurationSeconds"] == 1
    assert record_from_lease_spec(None) == LeaderElectionRecord("", 0.0)
