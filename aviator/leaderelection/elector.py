"""LeaderElector: campaign for a lock, hold it by renewing, step down the moment it slips.

Modelled on client-go's tools/leaderelection:

- A candidate reads the record. If another holder's record has not changed for
  lease_duration on *our* monotonic clock (counted from when we first saw that version),
  the lease is expired and we write ourselves in, with optimistic concurrency: a 409
  means another candidate won the race. leaseTransitions grows on each change of holder.
- The leader renews every retry_period. If no renewal succeeds for renew_deadline since
  the last successful one (or the record shows another holder), leadership is lost: the
  on_started_leading task is cancelled at once, then on_stopped_leading runs.
- On cancellation (graceful shutdown) with release_on_cancel, the leader writes an empty
  holder with a 1 s lease duration, so a standby takes over at its next retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from enum import Enum

from aviator.leaderelection.config import LeaderElectionConfig
from aviator.leaderelection.lock import LockConflict
from aviator.leaderelection.record import LeaderElectionRecord, micro_time

log = logging.getLogger(__name__)

# Acquire retries wait retry_period shortened by up to this fraction, so candidates spread
# out yet never wait longer than retry_period (which bounds the hand-over time).
ACQUIRE_JITTER = 0.25
# How soon after the observed lease expires a candidate tries (absorbs timer slop).
EXPIRY_MARGIN_S = 0.01
# A release re-reads and retries after a conflict at most this many times (each conflict
# means the lease moved: our own late renewal, normally once).
RELEASE_ATTEMPTS = 3


class _TermEnd(Enum):
    LOST = "lost"  # renewal failed or someone else holds the lease
    FINISHED = "finished"  # on_started_leading returned or raised


class LeaderElector:
    """Runs one campaign per run() call: acquire, lead until lost/cancelled, step down."""

    def __init__(
        self,
        config: LeaderElectionConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._lock = config.lock
        self._clock = clock
        self._rng = rng or random.Random()
        self._observed: LeaderElectionRecord | None = None
        self._observed_at = 0.0  # our clock when the observed record last changed
        self._reported_leader: str | None = None
        self._leading = False

    @property
    def identity(self) -> str:
        return self._lock.identity

    def is_leader(self) -> bool:
        """True while this elector holds the lease and its leading task runs."""
        return self._leading

    def leader(self) -> str | None:
        """The holder named by the last record we saw; None if unknown or released."""
        if self._observed is None or not self._observed.holder_identity:
            return None
        return self._observed.holder_identity

    # The campaign.

    async def run(self) -> None:
        """Acquire, lead until leadership is lost or the task is cancelled, then step down.

        Returns after one term (call again to campaign again). If on_started_leading
        raises, leadership is released and the exception propagates.
        """
        await self._acquire()
        self._leading = True
        log.info("leader election %s: %s became leader", self._lock.describe(), self.identity)
        leading: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._lead(), name=f"leading-{self.identity}"
        )
        end: _TermEnd | None = None
        try:
            end = await self._hold(leading)
        finally:
            self._leading = False
            leading.cancel()  # no-op if it already finished
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await leading
            if end is not _TermEnd.LOST and self.config.release_on_cancel:
                await self._release()
            log.info(
                "leader election %s: %s stopped leading (%s)",
                self._lock.describe(),
                self.identity,
                end.value if end else "cancelled",
            )
            self._call(self.config.on_stopped_leading)
        if end is _TermEnd.FINISHED and not leading.cancelled():
            error = leading.exception()
            if error is not None:
                raise error

    async def _lead(self) -> None:
        await self.config.on_started_leading()

    async def run_forever(self) -> None:
        """Campaign again after every lost term, until cancelled."""
        while True:
            await self.run()

    async def _acquire(self) -> None:
        while True:
            try:
                if await self._attempt(self.config.renew_deadline):
                    return
            except Exception as err:
                log.warning("leader election %s: acquire failed: %s", self._lock.describe(), err)
            await asyncio.sleep(self._acquire_delay())

    def _acquire_delay(self) -> float:
        delay = self.config.retry_period * (1.0 - ACQUIRE_JITTER * self._rng.random())
        observed = self._observed
        if observed is not None and observed.holder_identity:
            # Wake right when the lease we saw would expire rather than up to a whole
            # retry_period after it.
            expires_in = self._observed_at + observed.lease_duration_s - self._clock()
            delay = min(delay, max(expires_in, 0.0) + EXPIRY_MARGIN_S)
        return delay

    async def _hold(self, leading: asyncio.Task[None]) -> _TermEnd:
        """Renew until leadership is lost or the leading task ends."""
        last_renewed = self._clock()
        while True:
            if await _finished_within(leading, self.config.retry_period):
                return _TermEnd.FINISHED
            while True:
                remaining = last_renewed + self.config.renew_deadline - self._clock()
                if remaining <= 0:
                    log.warning("leader election %s: renew deadline passed", self._lock.describe())
                    return _TermEnd.LOST
                try:
                    renewed = await self._attempt(remaining)
                except Exception as err:
                    log.warning("leader election %s: renew failed: %s", self._lock.describe(), err)
                    renewed = False
                if renewed:
                    last_renewed = self._clock()
                    break
                if self._observed is not None and not self._observed.held_by(self.identity):
                    log.warning(
                        "leader election %s: lease taken by %r",
                        self._lock.describe(),
                        self._observed.holder_identity,
                    )
                    return _TermEnd.LOST
                remaining = last_renewed + self.config.renew_deadline - self._clock()
                pause = min(self.config.retry_period, max(remaining, 0.0))
                if await _finished_within(leading, pause):
                    return _TermEnd.FINISHED

    async def _attempt(self, limit_s: float) -> bool:
        """tryAcquireOrRenew within limit_s; a timeout counts as failure."""
        try:
            async with asyncio.timeout(limit_s):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            return False

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        desired = LeaderElectionRecord(
            holder_identity=self.identity,
            lease_duration_s=self.config.lease_duration,
            acquire_time=now,
            renew_time=now,
        )
        current = await self._lock.get()
        if current is None:
            try:
                await self._lock.create(desired)
            except LockConflict:
                return False
            self._observe(desired)
            return True
        self._observe(current)
        if (
            current.holder_identity
            and not current.held_by(self.identity)
            and self._observed_at + current.lease_duration_s > self._clock()
        ):
            return False  # held by someone else and not expired on our clock
        if current.held_by(self.identity):
            desired = replace(
                desired,
                acquire_time=current.acquire_time or now,
                lease_transitions=current.lease_transitions,
            )
        else:
            desired = replace(desired, lease_transitions=current.lease_transitions + 1)
        try:
            await self._lock.update(desired)
        except LockConflict:
            return False
        self._observe(desired)
        return True

    def _observe(self, record: LeaderElectionRecord) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock()
        holder = record.holder_identity
        if holder and holder != self._reported_leader:
            self._reported_leader = holder
            if self.config.on_new_leader is not None:
                self._call(self.config.on_new_leader, holder)

    async def _release(self) -> None:
        """Give the lease up: empty holder, 1 s duration, transitions kept (ReleaseOnCancel).

        A renewal cancelled in flight may have reached the server after all, so the lease's
        version can be newer than the one the lock last saw: on a conflict the lease is read
        again and released if it is still ours (someone else holding it needs nothing from us).
        """
        observed = self._observed
        if observed is None or not observed.held_by(self.identity):
            return
        try:
            async with asyncio.timeout(self.config.renew_deadline):
                for _ in range(RELEASE_ATTEMPTS):
                    released = _released(observed)
                    try:
                        await self._lock.update(released)
                        break
                    except LockConflict:
                        current = await self._lock.get()
                        if current is None or not current.held_by(self.identity):
                            return
                        observed = current
                else:
                    raise LockConflict(f"lease still changing after {RELEASE_ATTEMPTS} attempts")
        except Exception as err:  # TimeoutError, LockConflict, API errors: the lease expires
            log.warning("leader election %s: release failed: %s", self._lock.describe(), err)
            return
        self._observe(released)
        log.info("leader election %s: %s released the lease", self._lock.describe(), self.identity)

    def _call(self, callback: Callable[..., None], *args: str) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception(
                "leader election callback %s failed", getattr(callback, "__name__", callback)
            )


def _released(held: LeaderElectionRecord) -> LeaderElectionRecord:
    """The record that gives up `held`: no holder, 1 s duration, transitions kept."""
    now = micro_time()
    return LeaderElectionRecord(
        holder_identity="",
        lease_duration_s=1.0,
        acquire_time=now,
        renew_time=now,
        lease_transitions=held.lease_transitions,
    )


async def _finished_within(task: asyncio.Task[None], seconds: float) -> bool:
    """Wait up to `seconds` for the task; True if it is done."""
    if seconds > 0:
        await asyncio.wait([task], timeout=seconds)
    return task.done()
