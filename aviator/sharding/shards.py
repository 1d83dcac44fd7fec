"""One replica's share of the policies: claims, releases and the guard around reconciles.

Sharding (`aviator controller --sharding`, docs/controller.md "Sharding") splits the
AviatorPolicies between the replicas. Each replica holds a member Lease of its own
(`members.py`), renewed by a `LeaderElector`; `ShardManager.run` is that elector's
leading task, so it runs exactly while the Lease is held: a replica that cannot renew
within the renew deadline has this task cancelled at once, as a leader has.

**The protocol.** The marker annotation on each policy (`claims.py`) names the one
replica that may write the policy's objects (slices, Services, status, Events, the
policy itself). Every replica computes the owner of each policy on the ring
(`ring.py`) over the members alive in its view plus itself, and acts by
`claims.decide`:

1. *claim*: the ring names us and the marker is empty, ours from an earlier term, or
   names a member whose Lease expired (or was released) in our view → write our marker
   with the resourceVersion we decided from as precondition (over a member that looks
   expired, only after a read of its Lease from the API server confirms it: the watch
   of the Leases may lag without knowing it); only on success is the policy ours (a
   conflict means someone changed it: decide again from the new version);
2. *release*: the marker is ours but the ring names another → stop: the policy leaves
   our owned set (new reconciles of it are refused, its queued work dropped); once its
   reconcile in flight (if any) has returned, we clear the marker (precondition
   again); the new owner sees the marker empty and claims. The new owner's member
   Lease is its request to hand over: no other message is needed;
3. *wait*: the ring names us but a live member holds the marker → nothing; it releases
   when its view of the ring agrees, or its Lease expires.

**Why no policy is written by two replicas at once.** A replica reconciles a policy
only while (a) its term runs (it holds its member Lease), (b) it claimed the policy
in this term and has not begun releasing it, and (c) its cache shows its own marker of
this term. The marker moves away from a replica only by its own release, written after
its last reconcile of the policy returned, or by a claim over it, made only once its
member Lease has been unchanged for a whole leaseDuration on the claimant's clock and
a read of it still finds it unchanged (so every renewal it was told had succeeded is
in what the claimant judged). The
holder stops writing renewDeadline after its last successful renewal (< leaseDuration),
so it stopped before anyone may take its policies (as for the leader Lease: clocks run
at about the same rate, and the difference between the two durations covers the
delay of a renewal's answer). A new term starts with nothing owned: a marker from an
earlier term is claimed again with a precondition, so a stale cache cannot make a
replica resume a policy someone took meanwhile. Claims and releases are
compare-and-set on the policy, so two replicas whose views of the ring differ for a
moment may both try; one wins, and neither writes before it has won.

State moves with the policy: the breaker and dampening state is in the policy's
`status.engineState`, written by the old owner before its release, and the claim's
precondition is on a version that already holds it; the reconciler's in-memory
memory of the policy is dropped on every gain and loss, so the new owner starts from
that status, as a new leader does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aviator.informers import FuncHandler, Indexer, object_key, resource_version, unwrap_tombstone
from aviator.informers.keys import JSON, DeletedFinalStateUnknown
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import AVIATORPOLICIES, LEASES
from aviator.sharding import ring
from aviator.sharding.claims import Action, claim_patch, decide, holder, marker_of, marker_value
from aviator.sharding.members import MemberTable, member_lease_name

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITES_IN_FLIGHT = 16  # claims and releases sent at once
EXPIRY_MARGIN_S = 0.01  # wake this long after a member would expire (timer slop)


class ShardManager:
    """Claims and releases this replica's policies; `guard` runs only owned reconciles.

    `on_gained(key)`/`on_lost(key)` are called when a policy becomes ours (claim
    written) and stops being ours (before its release is written, or the term ended);
    `enqueue(key)` asks for a reconcile (the controller's enqueue, filtered by `owns`).
    """

    def __init__(
        self,
        client: KubeClient,
        identity: str,
        policies: Indexer,
        namespace: str,
        *,
        on_gained: Callable[[str], None],
        on_lost: Callable[[str], None],
        enqueue: Callable[[str], None],
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.identity = identity
        self._policies = policies
        self._namespace = namespace  # of the member Leases
        self._on_gained = on_gained
        self._on_lost = on_lost
        self._enqueue = enqueue
        self._retry_period = retry_period
        self._clock = clock
        self.members = MemberTable()
        self.term = ""
        self._active = False
        self._owned: set[str] = set()
        self._released: set[str] = set()  # released this term; our cache may lag
        self._busy: set[str] = set()  # keys whose reconcile is in flight
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._alive: frozenset[str] = frozenset()
        self._wake = asyncio.Event()

    # --- what the controller asks ------------------------------------------------------

    def owns(self, key: str) -> bool:
        """May this replica reconcile `key` now (module docstring: (a), (b), (c))."""
        if not self._active or key not in self._owned:
            return False
        policy = self._policies.get(key)
        return policy is not None and marker_of(policy) == marker_value(self.identity, self.term)

    def owned(self) -> frozenset[str]:
        return frozenset(self._owned) if self._active else frozenset()

    async def guard(self, key: str, reconcile: Callable[[str], Awaitable[T]]) -> T | None:
        """Run `reconcile(key)` if we own the key (else drop it); a release waits for it."""
        if not self.owns(key):
            return None
        self._busy.add(key)
        try:
            return await reconcile(key)
        finally:
            self._busy.discard(key)
            if key not in self._owned:
                self._touch(key)  # let go meanwhile: its release may be written now

    # --- informer events ---------------------------------------------------------------

    def lease_handler(self) -> FuncHandler:
        def seen(lease: JSON) -> None:
            if self.members.observe(lease, self._clock()):
                self._wake.set()

        def gone(obj: JSON | DeletedFinalStateUnknown) -> None:
            self.members.deleted(unwrap_tombstone(obj), self._clock())
            self._wake.set()

        return FuncHandler(
            add=lambda obj, _initial: seen(obj), update=lambda _old, new: seen(new), delete=gone
        )

    def policy_handler(self) -> FuncHandler:
        def changed(old: JSON | None, new: JSON) -> None:
            mark = marker_of(new)
            if old is not None and marker_of(old) == mark:
                return  # a status or spec write: nothing to decide
            key = object_key(new)
            self._touch(key)
            if self._active and key in self._owned and mark == self._mine():
                self._enqueue(key)  # our claim reached the cache: reconcile it now

        def gone(obj: JSON | DeletedFinalStateUnknown) -> None:
            self._touch(object_key(obj))

        return FuncHandler(
            add=lambda obj, _initial: changed(None, obj), update=changed, delete=gone
        )

    def _touch(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()

    def _mine(self) -> str:
        return marker_value(self.identity, self.term)

    # --- one term ----------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and release until cancelled (the member Lease was lost or we stop)."""
        self.term = secrets.token_hex(4)
        self._owned.clear()
        self._released.clear()
        self._all_dirty = True
        self._active = True
        log.info("shard %s: term %s started", self.identity, self.term)
        try:
            while True:
                retry = await self._step()
                await self._sleep(retry)
        finally:
            self._active = False
            lost, self._owned = self._owned, set()
            for key in lost:
                self._on_lost(key)
            log.info(
                "shard %s: term %s ended, %d policies let go", self.identity, self.term, len(lost)
            )

    async def _sleep(self, retry: bool) -> None:
        now = self._clock()
        if self.members.alive(now) != self._alive:
            return  # a member expired while we were deciding: decide again now
        timeout = self._retry_period if retry else None
        expiry = self.members.next_expiry(now)
        if expiry is not None:
            expiry += EXPIRY_MARGIN_S
            timeout = expiry if timeout is None else min(timeout, expiry)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()

    async def _step(self) -> bool:
        """Decide for the policies that changed (all, when membership did); True when a
        write failed and must be tried again."""
        alive = self.members.alive(self._clock())
        if alive != self._alive:
            log.info("shard %s: members now %s", self.identity, sorted(alive | {self.identity}))
            self._alive = alive
            self._all_dirty = True
        if self._all_dirty:
            keys = set(self._policies.keys()) | self._owned | self._dirty
        else:
            keys = set(self._dirty)
        self._all_dirty = False
        self._dirty.clear()
        members = sorted(alive | {self.identity})
        gate = asyncio.Semaphore(WRITES_IN_FLIGHT)
        dead: dict[str, asyncio.Task[bool]] = {}  # one read per member and step
        results = await asyncio.gather(
            *(self._settle(key, members, alive, gate, dead) for key in keys)
        )
        failed = [key for key, ok in zip(keys, results, strict=True) if not ok]
        self._dirty.update(failed)
        return bool(failed)

    async def _settle(
        self,
        key: str,
        members: list[str],
        alive: frozenset[str],
        gate: asyncio.Semaphore,
        dead: dict[str, asyncio.Task[bool]],
    ) -> bool:
        """Act on one policy; False when it must be tried again."""
        policy = self._policies.get(key)
        if policy is None:
            self._drop(key)
            self._released.discard(key)
            return True
        marker = marker_of(policy)
        if key in self._released and marker != self._mine():
            self._released.discard(key)  # our release (or a newer write) is in the cache
        if key in self._released:
            # Released (or maybe: the answer was lost) and the cache still shows our
            # marker: never take that as ours again; write the release again instead (a
            # conflict if the first one landed: then the cache catches up).
            action = Action.RELEASE
        else:
            action = decide(self.identity, self.term, marker, alive, ring.owner(members, key))
        if action is Action.KEEP:
            if key not in self._owned:  # a claim whose answer was lost landed after all
                self._gain(key)
            return True
        if action in (Action.WAIT, Action.IGNORE):
            self._drop(key)
            return True
        if action is Action.RELEASE:
            self._drop(key)
            if key in self._busy:
                return True  # its reconcile in flight comes back here when it returns
            self._released.add(key)  # from the moment it is sent, it may land
        who = holder(marker)
        if action is Action.CLAIM and who not in ("", self.identity):
            # Taking it from a member that looks expired: only if its Lease, read now,
            # says so too (our watch of the Leases may lag without knowing it).
            if who not in dead:
                dead[who] = asyncio.ensure_future(self._confirm_dead(who))
            if not await dead[who]:
                return who in self.members.alive(self._clock())  # alive: the table woke us
        async with gate:
            ok = await self._write(key, policy, self._mine() if action is Action.CLAIM else None)
        if ok and action is Action.CLAIM:
            self._gain(key)
        return ok

    async def _confirm_dead(self, who: str) -> bool:
        """Read `who`'s member Lease and observe it; True if it is still not alive."""
        name = member_lease_name(who)
        try:
            lease = await self._client.get(LEASES, name, self._namespace)
        except ApiError as err:
            if not err.not_found:
                log.warning("shard %s: reading the Lease %s failed: %s", self.identity, name, err)
                return False
            if self.members.gone(name, self._clock()):
                self._wake.set()
        except (OSError, TimeoutError) as err:
            log.warning("shard %s: reading the Lease %s failed: %r", self.identity, name, err)
            return False
        else:
            if self.members.observe(lease, self._clock()):
                self._wake.set()
        return who not in self.members.alive(self._clock())

    def _gain(self, key: str) -> None:
        self._owned.add(key)
        self._on_gained(key)
        self._enqueue(key)  # taken only once the cache shows our marker (else: on that event)

    def _drop(self, key: str) -> None:
        if key in self._owned:
            self._owned.discard(key)
            self._on_lost(key)

    async def _write(self, key: str, policy: JSON, marker: str | None) -> bool:
        namespace, _, name = key.partition("/")
        try:
            await self._client.patch(
                AVIATORPOLICIES, name, claim_patch(resource_version(policy), marker), namespace
            )
        except ApiError as err:
            if err.not_found:
                return True  # deleted: its delete event decides again
            if not err.conflict:
                log.warning("shard %s: marking %s failed: %s", self.identity, key, err)
            return False
        except (OSError, TimeoutError) as err:
            log.warning("shard %s: marking %s failed: %r", self.identity, key, err)
            return False
        log.info("shard %s: %s %s", self.identity, "claimed" if marker else "released", key)
        return True
