"""The controller process with sharding on (`--sharding`): the replica's member Lease,
the informer of everyone's member Leases, the `ShardManager` and one term of work.

The member Lease (`aviator-shard-<identity>` in the controller's namespace, labelled
`marks.LABEL_SHARD_MEMBER`) is held by a `LeaderElector` on a `LeaseLock` of its own,
with the same durations as the leader Lease would have: nobody else campaigns for it,
so it is acquired at once, and the elector's rules for renewing and for stepping down
apply unchanged. A term (the elector's leading task) runs the shard manager and the
reconcile loop together; losing the Lease (no renewal within the renew deadline)
cancels both at once, and a graceful stop releases the Lease after they stopped, so the
others may take this replica's policies without waiting for it to expire.

While it holds its Lease, a replica also deletes the member Leases of replicas dead
for long (members.py), so that rollouts do not leave one Lease per old pod behind.

Every replica still ingests every agent's stream (agents stream to all replicas), so a
policy's new owner has its pods' latency at once, as a new leader does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aviator.controller.metrics import ControllerMetrics
from aviator.informers import InformerFactory, SharedIndexInformer
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.marks import LABEL_SHARD_MEMBER
from aviator.kube.resources import LEASES
from aviator.leaderelection import LeaderElectionConfig, LeaderElector, LeaseLock
from aviator.reconcilers.reconciler import PolicyReconciler
from aviator.runtime.loop import Controller, Result
from aviator.sharding.members import GC_AFTER_LEASES, GC_MIN_S, member_lease_name
from aviator.sharding.shards import ShardManager

log = logging.getLogger(__name__)


class ShardedReplica:
    """This replica's part in sharding: `run()` holds the member Lease and works its terms."""

    def __init__(
        self,
        client: KubeClient,
        lease_client: KubeClient,
        factory: InformerFactory,
        policy_informer: SharedIndexInformer,
        controller: Controller,
        reconciler: PolicyReconciler,
        metrics: ControllerMetrics,
        *,
        namespace: str,
        identity: str,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
    ) -> None:
        self._controller = controller
        self._reconciler = reconciler
        self._metrics = metrics
        self.identity = identity
        self.manager = ShardManager(
            client,
            identity,
            policy_informer.indexer,
            namespace,
            on_gained=self._gained,
            on_lost=self._lost,
            enqueue=controller.enqueue,
            retry_period=retry_period,
        )
        self._client = client
        self._namespace = namespace
        self._lease_name = member_lease_name(identity)
        self._gc_after = max(GC_MIN_S, GC_AFTER_LEASES * lease_duration)
        self.members = factory.informer_for(
            LEASES, namespace=namespace, label_selector=LABEL_SHARD_MEMBER
        )
        self.members.add_event_handler(self.manager.lease_handler(), "shard-members")
        policy_informer.add_event_handler(self.manager.policy_handler(), "shard-markers")
        metrics.shard_owned.labels(shard=identity).set_function(lambda: len(self.manager.owned()))
        lock = LeaseLock(
            lease_client,
            namespace,
            self._lease_name,
            identity,
            labels={LABEL_SHARD_MEMBER: "true"},
        )
        self.elector = LeaderElector(
            LeaderElectionConfig(
                lock,
                on_started_leading=self._term,
                on_stopped_leading=lambda: log.info("%s: member Lease let go", identity),
                lease_duration=lease_duration,
                renew_deadline=renew_deadline,
                retry_period=retry_period,
                release_on_cancel=True,
            )
        )

    def owns(self, key: str) -> bool:
        return self.manager.owns(key)

    async def reconcile(self, key: str) -> Result | None:
        """The loop's reconcile: the policy reconciler, for owned keys only."""
        return await self.manager.guard(key, self._reconciler.reconcile)

    async def run(self) -> None:
        await self.elector.run_forever()

    async def _term(self) -> None:
        self._metrics.is_leader.set(1)
        self._reconciler.forget_all()
        try:
            async with asyncio.TaskGroup() as work:
                work.create_task(self.manager.run(), name=f"shard-{self.identity}")
                work.create_task(self._controller.run(), name=f"reconcile-{self.identity}")
                work.create_task(self._collect_garbage(), name=f"shard-gc-{self.identity}")
        finally:
            self._metrics.is_leader.set(0)
            self._reconciler.forget_all()

    async def _collect_garbage(self) -> None:
        """Delete the member Leases of replicas long gone (members.py), now and then."""
        while True:
            await asyncio.sleep(self._gc_after / 4)
            for lease in self.members.indexer.list():
                meta = lease.get("metadata") or {}
                name = str(meta.get("name") or "")
                dead = self.manager.members.dead_for(name, time.monotonic())
                if name == self._lease_name or dead is None or dead < self._gc_after:
                    continue
                body = {"preconditions": {"resourceVersion": meta.get("resourceVersion")}}
                try:
                    await self._client.delete(LEASES, name, self._namespace, body=body)
                    log.info(
                        "%s: deleted the member Lease %s (dead %.0f s)", self.identity, name, dead
                    )
                except ApiError as err:
                    if not (err.not_found or err.conflict):
                        log.warning(
                            "%s: deleting the member Lease %s: %s", self.identity, name, err
                        )

    def _gained(self, key: str) -> None:
        self._reconciler.forget(key)  # start from the policy's status, as a new leader
        self._metrics.shard_handovers.labels(shard=self.identity, direction="in").inc()

    def _lost(self, key: str) -> None:
        self._reconciler.forget(key)
        self._metrics.shard_handovers.labels(shard=self.identity, direction="out").inc()
