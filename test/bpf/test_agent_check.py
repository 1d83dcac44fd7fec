"""`aviator agent --check`: loads the real program and says so, or says why not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_bpf_privileges

from aviator.testing.waiting import BPF_COMPILE_BOUND_S

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(BPF_COMPILE_BOUND_S)]


def _check(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aviator", "agent", "--check", "--max-sockets", "1024"],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=BPF_COMPILE_BOUND_S - 30,
        check=False,
    )


def test_check_loads_the_program_and_unloads_it() -> None:
    require_bpf_privileges()
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "eBPF ok:" in result.stdout and "latency.bpf.c compiled" in result.stdout
    assert "send hook" in result.stdout and "receive hook" in result.stdout


def test_check_says_why_not(tmp_path: Path) -> None:
    require_bpf_privileges()
    missing = tmp_path / "missing" / "latency.bpf.c"
    result = _check({"AVIATOR_BPF_SOURCE": str(missing)})
    assert result.returncode == 1
    assert f"eBPF unavailable: BPF source {missing} not found" in result.stdout
