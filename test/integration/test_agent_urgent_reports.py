"""The agent's urgent report against the real API server: a request that stays open past
its pod's p99Threshold (learnt from the AviatorPolicy and Service the agent watches)
reaches the controller's stream at once, not at the agent's next report interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path

import pytest
from integration_support import create_policy, create_service, running_receiver
from test_agent_stream import (
    Env,
    ScriptedSource,
    endpoint_of,
    node_name,
    run_agent,
    running_pod,
    stop_agent,
    streaming_to,
    token_file,
)

from aviator.agent.bpf.model import EndpointKey
from aviator.agent.sources import MapState, PodIps
from aviator.agent.windows import CountersLike, EndpointKeyLike
from aviator.kube import KubeClient

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

IP = "127.0.52.1"
KEY = EndpointKey(IP, 8080, "server")
INTERVAL_S = 3.0
UPKEEP_S = 2.0  # longer than the bound on the urgent report below


@pytest.fixture
async def env(kube: KubeClient, namespace: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with running_receiver(kube, [f"{namespace}:agent"]) as receiver:
        yield kube, namespace, receiver, tmp_path


class HangingSource(ScriptedSource):
    """Answers every read with fresh samples until `hang()`; then the endpoint's oldest
    open request ages with the clock (as the kernel reports it)."""

    def __init__(self) -> None:
        super().__init__({KEY: 5_000})
        self.hung_at: float | None = None

    def hang(self) -> None:
        self.hung_at = time.monotonic()

    async def maintain(self, pods: PodIps) -> MapState:
        """A slow upkeep (a walk of big maps on a busy node): an urgent report must
        not wait for it."""
        await asyncio.sleep(UPKEEP_S)
        return await super().maintain(pods)

    async def read(self) -> Iterable[tuple[EndpointKeyLike, CountersLike]]:
        c = self.counters[KEY]
        if self.hung_at is None:
            return await super().read()
        c.rif = 1
        age_us = int((time.monotonic() - self.hung_at) * 1e6)
        return [(KEY, replace(c.frozen(), oldest_open_us=age_us))]


async def test_a_request_open_past_the_threshold_is_reported_at_once(env: Env) -> None:
    kube, ns, receiver, _ = env
    node = node_name()
    tokens = await token_file(env, node)
    await create_service(kube, ns, "web", {"app": "web"})
    await running_pod(kube, ns, "web-0", node, IP, {"app": "web"})
    await create_policy(
        kube, ns, "p", "web", circuitBreaker={"enabled": True, "p99Threshold": "300ms"}
    )
    source = HangingSource()
    config = streaming_to(receiver, node, tokens)
    config.report_interval_s = INTERVAL_S
    config.maintain_s = 0.0  # an upkeep at every tick it may run at
    agent, stop, task = await run_agent(kube, config, source)
    try:
        # A regular report that knows the threshold (the informers had synced).
        await receiver.store.wait_for(lambda s: endpoint_of(s, IP) is not None)
        assert agent.urgent.thresholds == {IP: 300_000}
        reports = len(receiver.store.snapshots)
        await receiver.store.wait_for(lambda _: len(receiver.store.snapshots) > reports)
        # Right after a regular report: the next is INTERVAL_S away.
        source.hang()

        def past(snap: object) -> bool:
            ep = endpoint_of(snap, IP)  # type: ignore[arg-type]
            return ep is not None and ep.oldest_open_us > 300_000

        snap = await receiver.store.wait_for(past, within_s=INTERVAL_S * 3)
        assert source.hung_at is not None
        took = time.monotonic() - source.hung_at
        print(f"open request reported {took:.2f} s after the pod stopped answering")
        # 0.3 s threshold + the send (a look when it crosses), no upkeep on the way
        assert took < INTERVAL_S / 2
        assert agent.urgent.sent == 1 and endpoint_of(snap, IP).rif == 1
        # Still hung: no further urgent report (one per crossing), regular ones go on.
        await receiver.store.wait_for(lambda s: s is not snap and past(s), within_s=INTERVAL_S * 3)
        assert agent.urgent.sent == 1
    finally:
        await stop_agent(stop, task)
