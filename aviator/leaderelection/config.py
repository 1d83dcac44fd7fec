"""Leader election settings and callbacks, validated as client-go does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass

from aviator.leaderelection.lock import Lock

JITTER_FACTOR = 1.2


@dataclass
class LeaderElectionConfig:
    """How to campaign for `lock` and what to do with leadership.

    lease_duration: how long others wait after last seeing the record change before they
      may take over. renew_deadline: how long the leader keeps trying to renew before it
      gives up leadership (measured from its last successful renewal). retry_period: the
      pause between attempts. on_started_leading runs as a task for the whole term and
      is cancelled the moment leadership is lost; on_stopped_leading is called after.
    """

    lock: Lock
    _: KW_ONLY
    on_started_leading: Callable[[], Awaitable[None]]
    on_stopped_leading: Callable[[], None]
    on_new_leader: Callable[[str], None] | None = None
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        if self.retry_period <= 0:
            raise ValueError("retry_period must be greater than zero")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("lease_duration must be greater than renew_deadline")
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError(f"renew_deadline must be greater than {JITTER_FACTOR} * retry_period")
        if not self.lock.identity:
            raise ValueError("lock identity must not be empty")
