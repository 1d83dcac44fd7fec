"""The agent DaemonSet's memory limit holds the agent's start.

While the program loads, the kernel charges the BPF verifier's working memory to the
loading process's memory cgroup (a few hundred MiB, for a few seconds), on top of the
in-process compiler's heap, and a container's limit counts both. A limit near that
peak OOM-kills the agent while it loads, again at every restart, and leaves the node's
pods unmeasured. This runs `aviator agent --check` with the DaemonSet's map sizes in a
memory cgroup limited like the DaemonSet (config/agent/agent.yaml; the chart's defaults
render the same, test/integration/test_chart.py) and wants the peak well under it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import require_bpf_privileges

from aviator.kube.nodes import quantity_millis
from aviator.testing.waiting import BPF_COMPILE_BOUND_S

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(BPF_COMPILE_BOUND_S)]

MANIFEST = Path(__file__).resolve().parents[2] / "config" / "agent" / "agent.yaml"
# The start's peak may use this much of the limit: the rest is for a busier node (more
# sockets in the maps, a larger page cache for the headers) than this one.
HEADROOM = 0.8
CGROUP_ROOT = Path("/sys/fs/cgroup")
SUBTREE = CGROUP_ROOT / "cgroup.subtree_control"  # cgroup v2: the controllers children get


def daemonset_memory_limit() -> int:
    """The agent container's memory limit in config/agent/agent.yaml, in bytes."""
    daemonset = next(
        doc
        for doc in yaml.safe_load_all(MANIFEST.read_text())
        if doc and doc.get("kind") == "DaemonSet"
    )
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    millis = quantity_millis(container["resources"]["limits"]["memory"])
    assert millis is not None, container["resources"]
    return millis // 1000


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    limit_file: str  # cgroup v1 memory.limit_in_bytes, v2 memory.max
    peak_file: str  # v1 memory.max_usage_in_bytes, v2 memory.peak

    def peak(self) -> int:
        return int((self.path / self.peak_file).read_text())


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A memory cgroup of its own with `limit`, removed afterwards; skips where the
    machine has none to give."""
    name = f"aviator-test-{os.getpid()}"
    if (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists():
        group = MemoryCgroup(
            CGROUP_ROOT / "memory" / name, "memory.limit_in_bytes", "memory.max_usage_in_bytes"
        )
    elif SUBTREE.exists() and "memory" in SUBTREE.read_text().split():
        group = MemoryCgroup(CGROUP_ROOT / name, "memory.max", "memory.peak")
    else:
        pytest.skip("no memory cgroup controller to limit a process with")
    try:
        group.path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup: {exc}")
    try:
        (group.path / group.limit_file).write_text(str(limit))
        yield group
    finally:
        group.path.rmdir()  # the process has exited; its page cache moves to the parent


def test_the_daemonsets_memory_limit_holds_the_agents_start() -> None:
    require_bpf_privileges()
    limit = daemonset_memory_limit()
    with memory_cgroup(limit) as group:
        check = shlex.join([sys.executable, "-m", "aviator", "agent", "--check"])
        procs = shlex.quote(str(group.path / "cgroup.procs"))
        result = subprocess.run(
            ["sh", "-c", f"echo $$ > {procs} && exec {check}"],
            capture_output=True,
            text=True,
            timeout=BPF_COMPILE_BOUND_S - 30,
            check=False,
        )
        peak = group.peak()
    mib = 1 << 20
    summary = f"peak {peak // mib} MiB under a {limit // mib} MiB limit"
    assert result.returncode == 0, (
        f"{summary}; exit {result.returncode}\n{result.stdout}{result.stderr}"
    )
    assert "eBPF ok:" in result.stdout
    assert peak <= HEADROOM * limit, f"{summary}: the start needs more room than the limit leaves"
