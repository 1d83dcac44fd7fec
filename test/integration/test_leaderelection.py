"""Leader election on a real coordination.k8s.io/v1 Lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from aviator.kube import KubeClient
from aviator.kube.resources import LEASES
from aviator.leaderelection import LeaderElectionConfig, LeaderElector, LeaseLock

pytestmark = pytest.mark.integration

LEASE, DEADLINE, RETRY = 3.0, 2.0, 0.5
# API round trips on a busy test machine: added to the theoretical bounds.
SLACK = 0.75


@dataclass
class Candidate:
    elector: LeaderElector
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    task: asyncio.Task[None] | None = None

    def start(self) -> Candidate:
        self.task = asyncio.create_task(self.elector.run())
        return self

    async def kill(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def candidate(kube: KubeClient, namespace: str, identity: str, *, release: bool) -> Candidate:
    cand: Candidate

    async def lead() -> None:
        cand.started_at = time.monotonic()
        cand.started.set()
        await asyncio.Event().wait()

    config = LeaderElectionConfig(
        LeaseLock(kube, namespace, "aviator-controller", identity),
        lease_duration=LEASE,
        renew_deadline=DEADLINE,
        retry_period=RETRY,
        release_on_cancel=release,
        on_started_leading=lead,
        on_stopped_leading=lambda: cand.stopped.set(),
    )
    cand = Candidate(LeaderElector(config))
    return cand


@pytest.fixture
async def candidates(kube: KubeClient, namespace: str) -> AsyncIterator[list[Candidate]]:
    made: list[Candidate] = []
    yield made
    for cand in made:
        if cand.task is not None and not cand.task.done():
            await cand.kill()


async def lease_spec(kube: KubeClient, namespace: str) -> dict[str, object]:
    lease = await kube.get(LEASES, "aviator-controller", namespace)
    spec = lease["spec"]
    assert isinstance(spec, dict)
    return spec


async def two_candidates(
    kube: KubeClient, namespace: str, candidates: list[Candidate], *, release: bool
) -> tuple[Candidate, Candidate]:
    a = candidate(kube, namespace, "ctl-a", release=release).start()
    candidates.append(a)
    await asyncio.wait_for(a.started.wait(), 10)
    b = candidate(kube, namespace, "ctl-b", release=release).start()
    candidates.append(b)
    async with asyncio.timeout(10):  # b has seen a's lease
        while b.elector.leader() != "ctl-a":  # noqa: ASYNC110 - state with no event to await
            await asyncio.sleep(0.05)
    return a, b


async def test_exactly_one_of_two_leads(
    kube: KubeClient, namespace: str, candidates: list[Candidate]
) -> None:
    a = candidate(kube, namespace, "ctl-a", release=True).start()
    b = candidate(kube, namespace, "ctl-b", release=True).start()
    candidates += [a, b]
    async with asyncio.timeout(10):
        while not (a.started.is_set() or b.started.is_set()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    end = time.monotonic() + 2 * LEASE
    while time.monotonic() < end:  # across two lease durations of renewals
        assert [c.elector.is_leader() for c in (a, b)].count(True) == 1
        await asyncio.sleep(0.1)
    leader, follower = (a, b) if a.elector.is_leader() else (b, a)
    assert not follower.started.is_set()
    spec = await lease_spec(kube, namespace)
    assert spec["holderIdentity"] == leader.elector.identity
    assert spec["leaseDurationSeconds"] == 3
    assert spec["leaseTransitions"] == 0
    assert follower.elector.leader() == leader.elector.identity


async def test_dead_leader_is_replaced_within_lease_duration_plus_retry(
    kube: KubeClient, namespace: str, candidates: list[Candidate]
) -> None:
    a, b = await two_candidates(kube, namespace, candidates, release=False)
    await a.kill()  # renewals stop; the lease is not released
    killed = time.monotonic()
    assert (await lease_spec(kube, namespace))["holderIdentity"] == "ctl-a"
    await asyncio.wait_for(b.started.wait(), LEASE + RETRY + 5)
    handover = b.started_at - killed
    assert handover <= LEASE + RETRY + SLACK
    # Not before a's lease could have expired: a renewed at most RETRY before the kill.
    assert handover >= LEASE - RETRY - SLACK
    spec = await lease_spec(kube, namespace)
    assert spec["holderIdentity"] == "ctl-b"
    assert spec["leaseTransitions"] == 1


async def test_graceful_shutdown_releases_at_once(
    kube: KubeClient, namespace: str, candidates: list[Candidate]
) -> None:
    a, b = await two_candidates(kube, namespace, candidates, release=True)
    await a.kill()  # cancellation = graceful shutdown: release the lease
    released = time.monotonic()
    assert a.stopped.is_set()
    await asyncio.wait_for(b.started.wait(), LEASE)
    assert b.started_at - released <= RETRY + SLACK
    spec = await lease_spec(kube, namespace)
    assert spec["holderIdentity"] == "ctl-b"
    assert spec["leaseTransitions"] == 1


async def test_leader_whose_renewals_hang_stops_before_takeover(
    kube: KubeClient, namespace: str, candidates: list[Candidate]
) -> None:
    """Block a's lock calls (as a network partition would): a must stop leading first."""
    a, b = await two_candidates(kube, namespace, candidates, release=True)
    lock = a.elector.config.lock
    assert isinstance(lock, LeaseLock)
    blocked = asyncio.Event()

    async def hang(*args: object, **kwargs: object) -> None:
        blocked.set()
        await asyncio.Event().wait()

    lock.get = hang  # type: ignore[method-assign]
    await asyncio.wait_for(blocked.wait(), RETRY + SLACK)
    await asyncio.wait_for(a.stopped.wait(), DEADLINE + SLACK)
    stopped_at = time.monotonic()
    assert not a.elector.is_leader()
    await asyncio.wait_for(b.started.wait(), LEASE + RETRY + 5)
    assert stopped_at < b.started_at
