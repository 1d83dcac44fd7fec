"""LeaderElector against an in-memory lock, with short real-time durations."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from leaderelection_fakes import LockServer, MemoryLock

from aviator.leaderelection import LeaderElectionConfig, LeaderElectionRecord, LeaderElector

LEASE, DEADLINE, RETRY = 0.6, 0.4, 0.1
# Event-loop latency on a busy machine, added to the theoretical bounds.
SLACK = 0.2


@dataclass
class Candidate:
    """One elector plus what its callbacks saw."""

    elector: LeaderElector
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    leading_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    leaders_seen: list[str] = field(default_factory=list)
    started_at: float = 0.0
    cancelled_at: float = 0.0
    task: asyncio.Task[None] | None = None


def candidate(
    server: LockServer, identity: str, *, release: bool = True, fail_leading: bool = False
) -> Candidate:
    cand: Candidate

    async def lead() -> None:
        cand.started_at = time.monotonic()
        cand.started.set()
        if fail_leading:
            raise RuntimeError("reconciler crashed")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cand.cancelled_at = time.monotonic()
            cand.leading_cancelled.set()
            raise

    def stopped() -> None:
        cand.stopped.set()

    config = LeaderElectionConfig(
        MemoryLock(server, identity),
        lease_duration=LEASE,
        renew_deadline=DEADLINE,
        retry_period=RETRY,
        release_on_cancel=release,
        on_started_leading=lead,
        on_stopped_leading=stopped,
        on_new_leader=lambda who: cand.leaders_seen.append(who),
    )
    cand = Candidate(LeaderElector(config))
    return cand


def start(cand: Candidate) -> Candidate:
    cand.task = asyncio.create_task(cand.elector.run())
    return cand


async def leader_and_standby(
    server: LockServer, cleanup: list[Candidate], *, release: bool = True
) -> tuple[Candidate, Candidate]:
    """Candidate "a" leading and "b" running, b having seen a as the leader."""
    a = start(candidate(server, "a", release=release))
    cleanup.append(a)
    await asyncio.wait_for(a.started.wait(), 2)
    b = start(candidate(server, "b"))
    cleanup.append(b)
    await _until(lambda: b.elector.leader() == "a")
    return a, b


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Candidate]]:
    cands: list[Candidate] = []
    yield cands
    for cand in cands:
        if cand.task is not None:
            cand.task.cancel()
            with contextlib.suppress(BaseException):
                await cand.task


def test_config_is_validated() -> None:
    lock = MemoryLock(LockServer(), "a")

    async def lead() -> None:
        return None

    def cfg(duration: float, deadline: float, retry: float) -> LeaderElectionConfig:
        return LeaderElectionConfig(
            lock,
            lease_duration=duration,
            renew_deadline=deadline,
            retry_period=retry,
            on_started_leading=lead,
            on_stopped_leading=lambda: None,
        )

    cfg(15, 10, 2)
    with pytest.raises(ValueError):
        cfg(10, 10, 2)  # duration must exceed deadline
    with pytest.raises(ValueError):
        cfg(15, 2.4, 2)  # deadline must exceed 1.2 * retry
    with pytest.raises(ValueError):
        cfg(15, 10, 0)
    with pytest.raises(ValueError):
        LeaderElectionConfig(
            MemoryLock(LockServer(), ""),
            on_started_leading=lead,
            on_stopped_leading=lambda: None,
        )


async def test_single_candidate_creates_lease_and_leads(cleanup: list[Candidate]) -> None:
    server = LockServer()
    a = start(candidate(server, "a"))
    cleanup.append(a)
    await asyncio.wait_for(a.started.wait(), 2)
    assert a.elector.is_leader()
    assert a.elector.leader() == "a"
    assert a.leaders_seen == ["a"]
    assert server.record is not None
    assert server.record.holder_identity == "a"
    assert server.record.lease_transitions == 0
    # It keeps renewing: the record changes, acquire time does not.
    first = server.record
    await _until(lambda: len(server.writes) >= 3)
    assert server.record.renew_time >= first.renew_time
    assert server.record.acquire_time == first.acquire_time


async def test_two_candidates_exactly_one_leads(cleanup: list[Candidate]) -> None:
    server = LockServer()
    a, b = start(candidate(server, "a")), start(candidate(server, "b"))
    cleanup += [a, b]
    await asyncio.wait_for(_first_set(a.started, b.started), 2)
    deadline = time.monotonic() + 3 * LEASE
    while time.monotonic() < deadline:  # sample across several lease durations
        leaders = [c for c in (a, b) if c.elector.is_leader()]
        assert len(leaders) == 1
        await asyncio.sleep(RETRY / 5)
    follower = b if a.elector.is_leader() else a
    assert not follower.started.is_set()
    assert follower.elector.leader() == (a if follower is b else b).elector.identity


async def test_partitioned_leader_steps_down_before_standby_takes_over(
    cleanup: list[Candidate],
) -> None:
    server = LockServer()
    a, b = await leader_and_standby(server, cleanup)
    last_renewal = time.monotonic()
    server.partitioned.add("a")  # a's renewals now hang
    await asyncio.wait_for(a.leading_cancelled.wait(), 2)
    await asyncio.wait_for(a.stopped.wait(), 1)
    assert not a.elector.is_leader()
    assert a.task is not None
    await asyncio.wait_for(a.task, 1)  # run() returns after a lost term
    # a stopped within renew_deadline of its last renewal (+ one retry of slack) ...
    assert a.cancelled_at - last_renewal <= DEADLINE + RETRY + SLACK
    await asyncio.wait_for(b.started.wait(), 2)
    # ... strictly before b could take over (a full lease_duration after a's last write).
    assert a.cancelled_at < b.started_at
    assert b.started_at - last_renewal >= LEASE - RETRY - 0.05
    assert server.record is not None
    assert server.record.holder_identity == "b"
    assert server.record.lease_transitions == 1
    assert b.leaders_seen == ["a", "b"]


async def test_killed_leader_is_replaced_within_lease_duration_plus_retry(
    cleanup: list[Candidate],
) -> None:
    server = LockServer()
    a, b = await leader_and_standby(server, cleanup, release=False)
    assert a.task is not None
    a.task.cancel()
    killed = time.monotonic()
    with contextlib.suppress(asyncio.CancelledError):
        await a.task
    assert server.record is not None and server.record.holder_identity == "a"  # not released
    await asyncio.wait_for(b.started.wait(), LEASE + RETRY + 0.5)
    assert b.started_at - killed <= LEASE + RETRY + SLACK
    assert b.started_at - killed >= LEASE - RETRY - 0.05


async def test_graceful_shutdown_releases_and_standby_takes_over_at_once(
    cleanup: list[Candidate],
) -> None:
    server = LockServer()
    a, b = await leader_and_standby(server, cleanup)
    assert a.task is not None
    a.task.cancel()
    released = time.monotonic()
    with contextlib.suppress(asyncio.CancelledError):
        await a.task
    assert a.leading_cancelled.is_set() and a.stopped.is_set()
    released_record = server.writes[-1] if server.writes[-1].holder_identity == "" else None
    assert released_record is not None or (server.record and server.record.holder_identity == "b")
    await asyncio.wait_for(b.started.wait(), RETRY + 2 * SLACK)
    assert b.started_at - released <= RETRY + SLACK
    assert server.record is not None
    assert server.record.lease_transitions == 1


async def test_release_after_a_renewal_lost_in_flight_still_releases(
    cleanup: list[Candidate],
) -> None:
    """A renewal that reached the server but whose reply was cut off by shutdown leaves the
    lock's version stale; the release must still give the lease up, not leave it to expire."""
    server = LockServer()
    a, b = await leader_and_standby(server, cleanup)
    assert a.task is not None
    writes = len(server.writes)
    server.reply_lost.add("a")
    await _until(lambda: len(server.writes) > writes)  # the renewal landed, its reply did not
    a.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await a.task
    assert any(w.holder_identity == "" for w in server.writes[writes:])
    await asyncio.wait_for(b.started.wait(), RETRY + 2 * SLACK)


async def test_stolen_lease_stops_the_leader_at_next_renewal(cleanup: list[Candidate]) -> None:
    server = LockServer()
    a = start(candidate(server, "a"))
    cleanup.append(a)
    await asyncio.wait_for(a.started.wait(), 2)
    server.write(LeaderElectionRecord("intruder", 60.0, "t", "t", 5))
    stolen = time.monotonic()
    await asyncio.wait_for(a.leading_cancelled.wait(), 2)
    assert a.cancelled_at - stolen <= RETRY + SLACK  # no waiting for the renew deadline
    assert server.record is not None and server.record.holder_identity == "intruder"


async def test_unreachable_lock_means_no_leadership(cleanup: list[Candidate]) -> None:
    server = LockServer()
    server.failing.add("a")
    a = start(candidate(server, "a"))
    cleanup.append(a)
    await asyncio.sleep(3 * RETRY)  # nothing to await: a must simply never start
    assert not a.started.is_set()
    server.failing.clear()
    await asyncio.wait_for(a.started.wait(), 1)


async def test_crashing_leading_task_releases_and_raises(cleanup: list[Candidate]) -> None:
    server = LockServer()
    a = start(candidate(server, "a", fail_leading=True))
    cleanup.append(a)
    assert a.task is not None
    with pytest.raises(RuntimeError, match="reconciler crashed"):
        await asyncio.wait_for(a.task, 2)
    assert a.stopped.is_set()
    assert server.record is not None and server.record.holder_identity == ""
    assert server.record.lease_duration_s == 1.0


async def _first_set(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


async def _until(predicate: object, within: float = 2.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling state with no event to await
            await asyncio.sleep(0.005)
