"""The agent's hand-off, wired: the executor on the BPF program's socket map, the
runner on the agent's informers, Events and metrics (aviator.agent.handoff.runner says
what a hand-off does; this module only connects the parts)."""

from __future__ import annotations

import logging

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.iterend import KernelEnder
from aviator.agent.bpf.model import BpfUnavailable
from aviator.agent.config import AgentConfig
from aviator.agent.handoff.drain import Owners, send_goaway
from aviator.agent.handoff.executor import HandOffExecutor
from aviator.agent.handoff.netlink import open_diag, own_netns
from aviator.agent.handoff.runner import HandOffRunner
from aviator.agent.metrics import AgentMetrics
from aviator.agent.podmap import PodMap
from aviator.agent.sources import CounterSource
from aviator.informers import FuncHandler, SharedIndexInformer
from aviator.kube import KubeClient
from aviator.runtime.events import EventRecorder
from aviator.runtime.writer import WriteMetrics, Writer

log = logging.getLogger(__name__)


def handoff_runner(
    config: AgentConfig,
    source: CounterSource,
    client: KubeClient,
    metrics: AgentMetrics,
    policies: SharedIndexInformer,
    pods: PodMap,
) -> HandOffRunner | None:
    """The agent's hand-off runner, poked by policy and pod changes; None when hand-off
    is off or the source has no BPF program (its socket map says which connections
    are idle)."""
    bpf = getattr(source, "bpf", None)
    if not config.handoff or bpf is None:
        return None
    own = own_netns()
    owners = Owners()
    ender = kernel_ender(bpf)
    executor = HandOffExecutor(
        table=bpf,
        open_diag=lambda inode: open_diag(inode, ender),
        netns_allowed=(lambda ns: ns == own) if config.handoff_netns == "own" else None,
        node_addresses=config.node_addresses,
        rate=config.handoff_rate,
        quiet_s=config.handoff_quiet_s,
        burst=max(1.0, config.handoff_rate / 5),
        drain=lambda sock, diag: send_goaway(
            sock.netns, diag.inode, sock.protocol, lambda: bpf.server_cut(sock.sk), owners
        ),
    )
    recorder = EventRecorder(
        Writer(client, WriteMetrics(metrics.registry)),
        f"aviator-agent-{config.node}",
    )
    runner = HandOffRunner(
        executor,
        config.node,
        policies.indexer.list,
        pods.informer.indexer.get,
        policy=policies.indexer.get,
        record=lambda obj, reason, note: recorder.record(obj, reason, note, action="HandOff"),
        on_ended=lambda pod, n: metrics.count_handoff(pod, ended=n),
        on_drained=lambda pod, n: metrics.count_handoff(pod, drained=n),
    )
    poke = FuncHandler(
        add=lambda _o, _i: runner.poke(),
        update=lambda _o, _n: runner.poke(),
        delete=lambda _o: runner.poke(),
    )
    policies.add_event_handler(poke)
    pods.informer.add_event_handler(poke)
    return runner


def kernel_ender(bpf: BpfLatencySource) -> KernelEnder | None:
    """The program's way to end a quiet connection in one step in the kernel, or None
    (then a look and a destroy through sock_diag); the log says which, and why."""
    try:
        ender = bpf.kernel_ender()
    except BpfUnavailable as exc:
        log.info("hand-off ends connections through sock_diag: %s", exc.reason)
        return None
    log.info("hand-off ends connections in the kernel, under each socket's lock")
    return ender
