"""Fixtures for tests that load the real BPF program into the running kernel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.loader import check_privileges
from aviator.agent.bpf.model import BpfUnavailable

# Bounds on a test's own run time: a test that compiles a program itself gets
# BPF_COMPILE_BOUND_S; the others get TEST_BOUND_S for their own work only (func_only:
# the session fixture's compile is not theirs).
TEST_BOUND_S = 120


def require_bpf_privileges() -> None:
    """Skip (not fail) only where the kernel would refuse us: no privilege."""
    try:
        check_privileges()
    except BpfUnavailable as exc:
        pytest.skip(f"cannot load BPF here: {exc.reason}")


@pytest.fixture(scope="session")
def latency_source() -> Iterator[BpfLatencySource]:
    """The program, loaded once for the session. Counters are cumulative, so tests
    diff snapshots and use their own 127.0.x.y addresses and ports."""
    require_bpf_privileges()
    # The agent's own map sizes: the program measures every TCP endpoint of the machine,
    # and a busy one (other control planes, boxes, suites) has thousands; smaller maps
    # filled up and left the tests' own endpoints unmeasured.
    source = BpfLatencySource.load()
    try:
        yield source
    finally:
        source.close()
