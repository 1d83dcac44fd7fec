"""An in-memory lock with optimistic concurrency, and ways to make one candidate fail."""

from __future__ import annotations

import asyncio

from aviator.leaderelection import LeaderElectionRecord, LockConflict


class LockServer:
    """The single stored record, versioned like an API object."""

    def __init__(self) -> None:
        self.record: LeaderElectionRecord | None = None
        self.version = 0
        self.writes: list[LeaderElectionRecord] = []
        self.partitioned: set[str] = set()  # identities whose calls hang forever
        self.failing: set[str] = set()  # identities whose calls raise at once
        # identities whose next update is written but whose reply never comes back
        self.reply_lost: set[str] = set()

    def write(self, record: LeaderElectionRecord) -> None:
        self.record = record
        self.version += 1
        self.writes.append(record)


class MemoryLock:
    def __init__(self, server: LockServer, identity: str) -> None:
        self.server = server
        self._identity = identity
        self._seen_version: int | None = None

    @property
    def identity(self) -> str:
        return self._identity

    def describe(self) -> str:
        return "memory/lock"

    async def _gate(self) -> None:
        await asyncio.sleep(0)
        if self._identity in self.server.partitioned:
            await asyncio.Event().wait()  # the request never comes back
        if self._identity in self.server.failing:
            raise ConnectionRefusedError("unreachable")

    async def get(self) -> LeaderElectionRecord | None:
        await self._gate()
        self._seen_version = self.server.version if self.server.record else None
        return self.server.record

    async def create(self, record: LeaderElectionRecord) -> None:
        await self._gate()
        if self.server.record is not None:
            raise LockConflict("exists")
        self.server.write(record)
        self._seen_version = self.server.version

    async def update(self, record: LeaderElectionRecord) -> None:
        await self._gate()
        if self._seen_version != self.server.version:
            raise LockConflict("stale")
        self.server.write(record)
        if self._identity in self.server.reply_lost:
            self.server.reply_lost.discard(self._identity)
            await asyncio.Event().wait()  # written, but the caller never learns of it
        self._seen_version = self.server.version
