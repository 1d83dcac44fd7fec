"""Which way the agent's hand-off ends connections: in the kernel where the program
can, through sock_diag where it cannot, and the log says which and why."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.model import BpfUnavailable
from aviator.agent.handoff.wiring import kernel_ender


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
