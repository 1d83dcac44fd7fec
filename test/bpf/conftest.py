"""Fixtures for tests that load the real BPF program into the running kernel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.iterend import KernelEnder
from aviator.agent.bpf.loader import check_privileges
from aviator.agent.bpf.model import BpfUnavailable
from aviator.agent.handoff.executor import DiagOpener
from aviator.agent.handoff.netlink import open_diag

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


@pytest.fixture(scope="session")
def kernel_ender(latency_source: BpfLatencySource) -> Iterator[KernelEnder]:
    """The program's hand-off iterator (bpf/handoff.h), loaded once."""
    try:
        ender = latency_source.kernel_ender()
    except BpfUnavailable as exc:
        pytest.skip(f"this kernel cannot end connections from BPF: {exc.reason}")
    try:
        yield ender
    finally:
        ender.close()


@pytest.fixture(params=["in the kernel", "through sock_diag"])
def ending(request: pytest.FixtureRequest) -> Iterator[DiagOpener]:
    """How the hand-off executor ends a connection: in one step under the socket's lock
    (the agent's way where the kernel can), or a look and a destroy (elsewhere). The
    kernel's way falls back to sock_diag once it fails: a test of it fails then."""
    if request.param == "through sock_diag":
        yield open_diag
        return
    ender: KernelEnder = request.getfixturevalue("kernel_ender")
    yield lambda inode: open_diag(inode, ender)
    assert ender.failure is None, f"the kernel's way failed: {ender.failure}"
