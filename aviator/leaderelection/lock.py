"""Resource locks for leader election: the Lock protocol and the Lease-based lock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aviator.kube.client import ApiError, RequestClient
from aviator.kube.resources import LEASES
from aviator.leaderelection.record import (
    JSON,
    LeaderElectionRecord,
    lease_spec_from_record,
    record_from_lease_spec,
)


class LockConflict(Exception):
    """Someone else wrote the lock since we read it (or created it first): we lost the race."""


class Lock(Protocol):
    """Optimistic-concurrency storage of one LeaderElectionRecord.

    update() succeeds only if the lock is unchanged since this Lock's last get/create/
    update; otherwise it raises LockConflict.
    """

    @property
    def identity(self) -> str: ...

    async def get(self) -> LeaderElectionRecord | None:
        """The current record, or None when the lock object does not exist."""
        ...

    async def create(self, record: LeaderElectionRecord) -> None: ...

    async def update(self, record: LeaderElectionRecord) -> None: ...

    def describe(self) -> str: ...


class LeaseLock:
    """A coordination.k8s.io/v1 Lease as the lock; resourceVersion guards every update."""

    def __init__(
        self,
        client: RequestClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        request_timeout_s: float = 10.0,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election identity must not be empty")
        self._client = client
        self.namespace = namespace
        self.name = name
        self._identity = identity
        self.request_timeout_s = request_timeout_s
        self.labels = dict(labels or {})  # set when the Lease is created
        self._lease: JSON | None = None  # last Lease object read or written

    @property
    def identity(self) -> str:
        return self._identity

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def get(self) -> LeaderElectionRecord | None:
        try:
            lease = await self._client.request(
                "GET", LEASES.path(self.namespace, self.name), timeout_s=self.request_timeout_s
            )
        except ApiError as err:
            if err.not_found:
                self._lease = None
                return None
            raise
        self._lease = lease
        return record_from_lease_spec(lease.get("spec"))

    async def create(self, record: LeaderElectionRecord) -> None:
        metadata: JSON = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            metadata["labels"] = self.labels
        body = {
            "apiVersion": LEASES.api_version,
            "kind": LEASES.kind,
            "metadata": metadata,
            "spec": lease_spec_from_record(record),
        }
        try:
            self._lease = await self._client.request(
                "POST", LEASES.path(self.namespace), body=body, timeout_s=self.request_timeout_s
            )
        except ApiError as err:
            if err.conflict:  # 409 AlreadyExists: another candidate created it first
                raise LockConflict(str(err)) from err
            raise

    async def update(self, record: LeaderElectionRecord) -> None:
        if self._lease is None:
            raise LockConflict("lease not read yet")
        body = dict(self._lease)
        body["spec"] = lease_spec_from_record(record)  # metadata keeps our resourceVersion
        try:
            self._lease = await self._client.request(
                "PUT",
                LEASES.path(self.namespace, self.name),
                body=body,
                timeout_s=self.request_timeout_s,
            )
        except ApiError as err:
            if err.conflict:
                raise LockConflict(str(err)) from err
            if err.not_found:
                self._lease = None
                raise LockConflict(str(err)) from err
            raise
