"""Which way the agent's hand-off ends connections: in the kernel where the program
can, through sock_diag where it cannot, and the log says which and why; and the
executor runs with the agent's hand-off settings."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.model import BpfUnavailable
from aviator.agent.config import AgentConfig
from aviator.agent.handoff.wiring import handoff_runner, kernel_ender
from aviator.agent.metrics import AgentMetrics
from aviator.informers import Indexer


class Source:
    def __init__(self, ender: Any) -> None:
        self._ender = ender

    def kernel_ender(self) -> Any:
        if isinstance(self._ender, BpfUnavailable):
            raise self._ender
        return self._ender


def test_in_the_kernel_where_the_program_can(caplog: pytest.LogCaptureFixture) -> None:
    ender = object()
    with caplog.at_level(logging.INFO):
        got = kernel_ender(cast(BpfLatencySource, Source(ender)))
    assert got is ender
    assert "in the kernel" in caplog.text


def test_through_sock_diag_where_it_cannot_saying_why(caplog: pytest.LogCaptureFixture) -> None:
    reason = "the kernel has no bpf_sock_destroy (Linux 6.5+)"
    with caplog.at_level(logging.INFO):
        got = kernel_ender(cast(BpfLatencySource, Source(BpfUnavailable(reason))))
    assert got is None
    assert "through sock_diag" in caplog.text and reason in caplog.text


class Informer:
    def __init__(self) -> None:
        self.indexer = Indexer()
        self.handlers: list[object] = []

    def add_event_handler(self, handler: object) -> None:
        self.handlers.append(handler)


def test_the_executor_runs_with_the_agents_hand_off_settings() -> None:
    config = AgentConfig(
        node="node-1",
        handoff_rate=20.0,
        handoff_quiet_s=0.01,
        node_addresses=["10.0.0.1"],
    )
    source = SimpleNamespace(bpf=Source(BpfUnavailable("no kfunc here")))
    policies, pods = Informer(), Informer()
    runner = handoff_runner(
        config,
        cast(Any, source),
        cast(Any, None),
        AgentMetrics(),
        cast(Any, policies),
        cast(Any, SimpleNamespace(informer=pods)),
    )
    assert runner is not None
    executor = runner.executor
    assert (executor.quiet_s, executor.rate, executor.burst) == (0.01, 20.0, 4.0)
    assert set(executor.node_addresses) == {"10.0.0.1"}
    assert policies.handlers and pods.handlers  # both poke the runner
