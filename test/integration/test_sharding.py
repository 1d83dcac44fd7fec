"""Sharded controllers against the real control plane: a replica joining takes its share
of the ring, a replica leaving gracefully hands its policies over at once, a crashed
one's policies move once its member Lease expired (state and slices unchanged), and a
replica whose Lease renewals fail stops reconciling before anyone takes its policies;
member Leases of replicas long gone are deleted.

"Written by one replica at a time" is checked on every reconcile that passed the
ownership guard (each one's start and end, per replica, in one process clock: any two
by different replicas on one policy must not overlap) and on the ownership markers
seen through a watch (between two live replicas a policy goes through no-owner)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from integration_support import (
    TestAgent,
    agent_token,
    create_policy,
    create_service_and_pods,
    endpoint_pods,
    eventually,
    get_policy,
    slices_of,
    start_controller,
    stream_url,
)

from aviator.controller import sharded
from aviator.controller.app import ControllerApp
from aviator.kube import KubeClient
from aviator.kube.marks import LABEL_SHARD_MEMBER
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, LEASES
from aviator.leaderelection.record import micro_time
from aviator.sharding import ring
from aviator.sharding.claims import holder, marker_of
from aviator.sharding.members import member_lease_name
from aviator.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.5
POLICIES = 10
INTERVAL = "500ms"


@dataclass
class Spans:
    """Every owned reconcile: (policy key, replica, start, end)."""

    spans: list[tuple[str, str, float, float]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, app: ControllerApp, monkeypatch: pytest.MonkeyPatch) -> None:
        who = app.options.identity
        inner = app.reconciler.reconcile

        async def recorded(key: str) -> Any:
            start = time.monotonic()
            try:
                return await inner(key)
            finally:
                self.spans.append((key, who, start, time.monotonic()))
                self.changed.set()

        monkeypatch.setattr(app.reconciler, "reconcile", recorded)

    def by(self, who: str, key: str | None = None) -> list[tuple[float, float]]:
        return [(s, e) for k, w, s, e in self.spans if w == who and key in (None, k)]

    def assert_one_writer(self) -> None:
        for key in {k for k, *_ in self.spans}:
            mine = sorted((s, e, w) for k, w, s, e in self.spans if k == key)
            for i, (s1, e1, w1) in enumerate(mine):
                for s2, e2, w2 in mine[i + 1 :]:
                    assert w1 == w2 or e1 <= s2 or e2 <= s1, (key, (w1, s1, e1), (w2, s2, e2))

    async def reconciled(self, who: str, keys: set[str], times: int = 2) -> None:
        """Wait until `who` reconciled each of `keys` `times` more times than now."""
        base = {k: len(self.by(who, k)) for k in keys}

        async def enough() -> bool:
            return all(len(self.by(who, k)) >= base[k] + times for k in keys)

        await eventually(enough, within=60)


@dataclass
class Markers:
    """The ownership marker of each policy, as a watch saw it change (holder only)."""

    seen: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    def direct_moves(self) -> list[tuple[str, str, str]]:
        """Moves from one holder straight to another (no release between)."""
        out = []
        for key, history in self.seen.items():
            for (_, a), (_, b) in itertools.pairwise(history):
                if a and b and a != b:
                    out.append((key, a, b))
        return out

    def assert_reconciled_by_holders(self, spans: Spans, slack: float = 0.2) -> None:
        """Every reconcile seen while watching ran while its replica's marker was on the
        policy (judged at its midpoint, away from the moments the marker changed by
        more than `slack`: the watch sees a change a little after the server made it)."""
        for key, who, start, end in spans.spans:
            history = self.seen.get(key) or []
            mid = (start + end) / 2
            if not history or mid < history[0][0] + slack:
                continue
            if any(abs(mid - t) < slack for t, _ in history[1:]):
                continue
            held = [h for t, h in history if t <= mid][-1]
            assert held == who, (key, who, mid, history)

    def first_taken_by(self, who: str, key: str) -> float | None:
        return next((t for t, h in self.seen.get(key, []) if h == who), None)


@contextlib.asynccontextmanager
async def watching_markers(kube: KubeClient, ns: str) -> AsyncIterator[Markers]:
    markers = Markers()
    listed = await kube.list(AVIATORPOLICIES, ns)
    for p in listed.get("items") or []:
        markers.seen[f"{ns}/{p['metadata']['name']}"] = [(time.monotonic(), holder(marker_of(p)))]
    rv = listed.get("metadata", {}).get("resourceVersion", "")

    async def watch() -> None:
        version = rv
        while True:  # the server may end a watch: go on from the last version seen
            async for ev in kube.watch(AVIATORPOLICIES.path(ns), {"resourceVersion": version}):
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    raise AssertionError(f"the watch of the markers failed: {obj}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                key = f"{ns}/{(obj.get('metadata') or {}).get('name')}"
                who = holder(marker_of(obj))
                history = markers.seen.setdefault(key, [])
                if not history or history[-1][1] != who:
                    history.append((time.monotonic(), who))

    task = asyncio.create_task(watch())
    try:
        yield markers
    finally:
        # A watch that died would make every check on the markers pass on nothing.
        failed = task.exception() if task.done() else None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if failed is not None:
            raise AssertionError(f"the watch of the markers ended: {failed!r}") from failed


@dataclass
class Fleet:
    cp: ControlPlane
    kube: KubeClient
    ns: str
    spans: Spans
    monkeypatch: pytest.MonkeyPatch
    apps: dict[str, tuple[ControllerApp, KubeClient]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [f"{self.ns}/p{i}" for i in range(POLICIES)]

    async def start(self, who: str) -> ControllerApp:
        app, client = await start_controller(
            self.cp,
            self.ns,
            identity=who,
            sharding=True,
            lease_duration=LEASE_S,
            renew_deadline=RENEW_S,
            retry_period=RETRY_S,
        )
        self.apps[who] = (app, client)
        self.spans.record(app, self.monkeypatch)
        return app

    async def stop(self, who: str) -> None:
        app, client = self.apps.pop(who)
        await app.stop()
        await client.close()

    async def holders(self) -> dict[str, str]:
        listed = await self.kube.list(AVIATORPOLICIES, self.ns)
        return {f"{self.ns}/{p['metadata']['name']}": holder(marker_of(p)) for p in listed["items"]}

    async def settled(self, members: set[str], within: float = 60) -> dict[str, str]:
        """Wait until every policy's marker names its owner on the ring of `members`."""
        expected = ring.assign(members, self.keys)

        async def matches() -> dict[str, str] | None:
            return expected if await self.holders() == expected else None

        return await eventually(matches, within=within, interval=0.05)


@pytest.fixture
async def fleet(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Fleet]:
    for i in range(POLICIES):
        await create_service_and_pods(
            kube, namespace, f"web{i}", {"app": f"web{i}"}, {f"pod{i}": f"10.71.{i}.1"}
        )
        await create_policy(kube, namespace, f"p{i}", f"web{i}", evaluationInterval=INTERVAL)
    made = Fleet(control_plane, kube, namespace, Spans(), monkeypatch)
    try:
        yield made
    finally:
        for who in list(made.apps):
            await made.stop(who)


async def test_join_takes_half_and_leave_hands_over_at_once(fleet: Fleet) -> None:
    await fleet.start("a")
    await fleet.settled({"a"})
    await fleet.spans.reconciled("a", set(fleet.keys))

    async with watching_markers(fleet.kube, fleet.ns) as markers:
        await fleet.start("b")
        owners = await fleet.settled({"a", "b"})
        bs = {k for k, w in owners.items() if w == "b"}
        assert 0 < len(bs) < POLICIES, owners  # the ring's share (half, give or take)
        await fleet.spans.reconciled("b", bs)
        await fleet.spans.reconciled("a", set(fleet.keys) - bs)
        # Between two live replicas a policy is released before it is claimed.
        assert markers.direct_moves() == []
        for key in bs:
            assert [h for _, h in markers.seen[key]] == ["a", "", "b"], markers.seen[key]

        # A graceful stop releases b's member Lease after its last reconcile: a takes
        # b's policies without waiting for the Lease to expire.
        stopped = time.monotonic()
        await fleet.stop("b")
        await fleet.settled({"a"}, within=LEASE_S + 30)
        assert time.monotonic() - stopped < LEASE_S, "waited for an expiry, not a release"
        await fleet.spans.reconciled("a", bs)
        markers.assert_reconciled_by_holders(fleet.spans)
    fleet.spans.assert_one_writer()


async def test_crash_moves_policies_after_the_lease_expires_keeping_state(
    fleet: Fleet, kube: KubeClient
) -> None:
    ns = fleet.ns
    ips = {"fast-1": "10.72.0.1", "fast-2": "10.72.0.2", "slow-1": "10.72.0.3"}
    await create_service_and_pods(kube, ns, "api", {"app": "api"}, ips)
    await create_policy(
        kube,
        ns,
        "breaker",
        "api",
        evaluationInterval=INTERVAL,
        selection={"mode": "percentage", "percentage": 100},
        circuitBreaker={
            "enabled": True,
            "p99Threshold": "100ms",
            "consecutiveViolations": 2,
            "recoveryInterval": "5m",
        },
    )
    key = f"{ns}/breaker"
    a, b = await fleet.start("a"), await fleet.start("b")
    owner = ring.owner(["a", "b"], key)
    survivor = "b" if owner == "a" else "a"
    token = await agent_token(kube, ns)
    latency = {ips["fast-1"]: 10.0, ips["fast-2"]: 10.0, ips["slow-1"]: 500.0}
    async with TestAgent(stream_url(a), token) as to_a, TestAgent(stream_url(b), token) as to_b:
        to_a.latency_ms = to_b.latency_ms = latency  # every replica ingests every agent

        async def ejected() -> dict[str, Any] | None:
            st = ((await get_policy(kube, ns, "breaker")) or {}).get("status") or {}
            return st if st.get("ejectedPods") == ["slow-1"] else None

        before = await eventually(ejected, within=60)
        keys = [*fleet.keys, key]
        expected = ring.assign({"a", "b"}, keys)
        await eventually(lambda: _holders_are(fleet, expected), within=60)
        slice_writes, stop_watch = await _watch_slices(kube, ns, "api")
        try:
            async with watching_markers(kube, ns) as markers:
                # The owner's tasks are cancelled and its member Lease is not released.
                victim = fleet.apps[owner][0]
                assert victim.sharded is not None
                victim.sharded.elector.config.release_on_cancel = False
                crashed = time.monotonic()
                await fleet.stop(owner)
                await eventually(
                    lambda: _holders_are(fleet, {k: survivor for k in keys}),
                    within=LEASE_S + 30,
                    interval=0.05,
                )
                taken = markers.first_taken_by(survivor, key)
                assert taken is not None, ("the take was not seen", markers.seen.get(key))
                moved = taken - crashed
                # Not before the Lease expired (its last renewal: up to a retry period
                # before the crash), and soon after.
                assert LEASE_S - RETRY_S - 0.1 <= moved <= LEASE_S + RETRY_S + 3, moved
                await fleet.spans.reconciled(survivor, {key}, times=4)
                markers.assert_reconciled_by_holders(fleet.spans)
            after = ((await get_policy(kube, ns, "breaker")) or {}).get("status") or {}
            assert after["ejectedPods"] == ["slow-1"]
            assert after["engineState"]["breaker"] == before["engineState"]["breaker"]
            assert slice_writes == [], slice_writes
        finally:
            await stop_watch()
    assert endpoint_pods(await _slices(kube, ns, "api-aviator")) == ["fast-1", "fast-2"]
    fleet.spans.assert_one_writer()


async def test_a_replica_that_cannot_renew_stops_before_its_policies_move(fleet: Fleet) -> None:
    await fleet.start("a")
    b = await fleet.start("b")
    owners = await fleet.settled({"a", "b"})
    bs = {k for k, w in owners.items() if w == "b"}
    await fleet.spans.reconciled("b", bs)

    async def unreachable(*_: Any, **__: Any) -> Any:
        raise OSError("partitioned")

    partition = pytest.MonkeyPatch()
    async with watching_markers(fleet.kube, fleet.ns) as markers:
        # b's Lease renewals fail (its own connection pool: nothing else of b's).
        cut = time.monotonic()
        partition.setattr(b.lease_client, "request", unreachable)
        await eventually(lambda: _true(not b.is_leader()), within=RENEW_S + 10, interval=0.02)
        stepped_down = time.monotonic()
        assert stepped_down - cut <= RENEW_S + 0.5
        await fleet.settled({"a"}, within=LEASE_S + 30)
        # The markers' watch sees what `settled` read from the server a little later.
        await eventually(
            lambda: _true(all(markers.first_taken_by("a", k) is not None for k in bs)),
            within=10,
            interval=0.02,
        )
        for key in bs:
            taken = markers.first_taken_by("a", key)
            assert taken is not None and taken >= stepped_down, (key, taken, stepped_down)
            # b starts nothing once it stepped down, and what it had in flight ended
            # before a took the policy. (Not "before stepped_down": is_leader() turns
            # False first, then the term's task is cancelled, so a reconcile in flight
            # ends a moment after; a took it a lease duration later.)
            b_spans = fleet.spans.by("b", key)
            last_start, last_b = max(s for s, _ in b_spans), max(e for _, e in b_spans)
            assert last_start <= stepped_down, (key, last_start, stepped_down)
            assert last_b <= taken, (key, last_b, taken)
        await fleet.spans.reconciled("a", bs)

        # Healed: b holds its Lease again and takes its share back, with a claim.
        partition.undo()
        await fleet.settled({"a", "b"}, within=LEASE_S + 30)
        await fleet.spans.reconciled("b", bs)
        markers.assert_reconciled_by_holders(fleet.spans)
    fleet.spans.assert_one_writer()


async def _true(value: bool) -> bool:
    return value


async def _holders_are(fleet: Fleet, expected: dict[str, str]) -> bool:
    return await fleet.holders() == expected


async def _slices(kube: KubeClient, ns: str, service: str) -> list[dict[str, Any]]:
    return await slices_of(kube, ns, service, ours=True)


async def _watch_slices(
    kube: KubeClient, ns: str, service: str
) -> tuple[list[str], Callable[[], Awaitable[None]]]:
    writes: list[str] = []
    rv = (await kube.list(ENDPOINTSLICES, ns)).get("metadata", {}).get("resourceVersion", "")

    async def watch() -> None:
        async for ev in kube.watch(ENDPOINTSLICES.path(ns), {"resourceVersion": rv}):
            name = ev["object"]["metadata"]["name"]
            if name.startswith(f"{service}-") and ev.get("type") != "BOOKMARK":
                writes.append(f"{ev['type']} {name}")

    task = asyncio.create_task(watch())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    return writes, stop


async def test_member_leases_of_replicas_long_gone_are_deleted(
    fleet: Fleet, kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharded, "GC_MIN_S", 2.0)  # instead of minutes
    monkeypatch.setattr(sharded, "GC_AFTER_LEASES", 1)
    ns = fleet.ns
    for who, holder_id in (("ghost", "ghost"), ("gone", "")):
        spec = {"holderIdentity": holder_id, "leaseDurationSeconds": 1, "renewTime": micro_time()}
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": member_lease_name(who), "labels": {LABEL_SHARD_MEMBER: "true"}},
            "spec": spec,
        }
        await kube.create(LEASES, body, ns)
    await fleet.start("a")
    await fleet.start("b")

    async def names() -> set[str]:
        listed = await kube.list(LEASES, ns, params={"labelSelector": LABEL_SHARD_MEMBER})
        return {lease["metadata"]["name"] for lease in listed["items"]}

    async def collected() -> set[str] | None:
        left = await names()
        return left if left == {member_lease_name("a"), member_lease_name("b")} else None

    await eventually(collected, within=60)
    await fleet.settled({"a", "b"})
