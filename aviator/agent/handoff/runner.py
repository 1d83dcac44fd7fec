"""The agent's hand-off loop: orders from the policies → the executor, paced.

`HandOffRunner.run()` keeps the executor's hand-offs equal to the orders for this
node (`orders.orders`): new orders begin, hand-offs whose order is gone are cancelled
(the pod is routed again, or gone). While any hand-off is active, the executor steps
every `step_s` in a thread (map walks and netlink calls block). A finished hand-off
that ended or drained connections, or left busy ones on the pod, is reported as a
`ConnectionsHandedOff` Event on its policy; ended connections are counted in
`aviator_agent_connections_handed_off_total`, busy HTTP/2 connections sent a graceful
GOAWAY in `aviator_agent_connections_drained_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from aviator.agent.handoff.executor import HandOff, HandOffExecutor
from aviator.agent.handoff.orders import orders
from aviator.kube.objects import JSON

log = logging.getLogger(__name__)

# (policy object, reason, note) → recorded; None: not recorded.
Recorder = Callable[[JSON, str, str], Awaitable[object]]


class HandOffRunner:
    def __init__(
        self,
        executor: HandOffExecutor,
        node: str,
        policies: Callable[[], Iterable[JSON]],
        local_pod: Callable[[str], JSON | None],
        *,
        policy: Callable[[str], JSON | None],
        record: Recorder | None = None,
        on_ended: Callable[[str, int], None] | None = None,
        on_drained: Callable[[str, int], None] | None = None,
        step_s: float = 0.05,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.executor = executor
        self.node = node
        self._policies = policies
        self._local_pod = local_pod
        self._policy = policy
        self._record = record
        self._on_ended = on_ended
        self._on_drained = on_drained
        self.step_s = step_s
        self._wall = wall
        self._changed = asyncio.Event()
        self._reported: set[int] = set()

    def poke(self) -> None:
        """Policies or pods changed: look at the orders again now."""
        self._changed.set()

    def sync(self) -> None:
        wanted = orders(self._policies(), self.node, self._local_pod, self._wall())
        for h in self.executor.active():
            if h.target.pod not in wanted:
                self.executor.cancel(h.target.pod)
        for order in wanted.values():
            self.executor.begin(order.target, order.policy, order.period_s)

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            self._changed.clear()
            try:
                self.sync()
                if self.executor.active():
                    before = {id(h): (h.ended, h.drained) for h in self.executor.handoffs.values()}
                    await asyncio.to_thread(self.executor.step)
                    self._count(before)
                await self._report_finished()
            except Exception:  # one bad round must not end hand-offs for good
                log.exception("hand-off round failed")
            timeout = self.step_s if self.executor.active() else 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def _count(self, before: dict[int, tuple[int, int]]) -> None:
        for h in self.executor.handoffs.values():
            ended, drained = before.get(id(h), (0, 0))
            if self._on_ended is not None and h.ended > ended:
                self._on_ended(h.target.pod, h.ended - ended)
            if self._on_drained is not None and h.drained > drained:
                self._on_drained(h.target.pod, h.drained - drained)

    async def _report_finished(self) -> None:
        for h in list(self.executor.handoffs.values()):
            if h.active or id(h) in self._reported:
                continue
            self._reported.add(id(h))
            # Also one that ended nothing but left busy connections on the pod: they
            # keep its clients there, which the operator should learn.
            if (h.ended or h.drained or h.remaining) and self._record is not None:
                policy = self._policy(h.policy)
                if policy is not None:
                    await self._record(policy, "ConnectionsHandedOff", _note(h))
        live = {id(h) for h in self.executor.handoffs.values()}
        self._reported &= live


def _note(h: HandOff) -> str:
    pod = h.target.pod.partition("/")[2]
    left = f"; {h.remaining} busy left alone" if h.remaining else ""
    took = f" after {h.finished - h.started:.1f}s" if h.finished is not None else ""
    drained = (
        f", drained {h.drained} busy HTTP/2 connection(s) with a graceful GOAWAY"
        if h.drained
        else ""
    )
    return (
        f"ended {h.ended} idle client connection(s){drained} of pod {pod} on port(s) "
        f"{', '.join(map(str, sorted(h.target.ports)))} ({h.outcome}{took}){left}"
    )
