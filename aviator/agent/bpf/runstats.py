"""The kernel's BPF run-time statistics (run count and total run time per program).

The kernel counts them only while statistics are enabled: `BPF_ENABLE_STATS` returns a
file descriptor that keeps them enabled until it is closed (so nothing is left switched
on globally if the agent dies); the `kernel.bpf_stats_enabled` sysctl is the fallback.
Counts are read with `BPF_OBJ_GET_INFO_BY_FD` on each program's file descriptor.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
# Offsets in struct bpf_prog_info (uapi/linux/bpf.h), stable since Linux 5.1.
_INFO_SIZE = 256
_OFF_RUN_TIME_NS = 192  # followed by run_cnt (u64)
_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

_libc = ctypes.CDLL(None, use_errno=True)


def bpf_syscall(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(2) with a prepared attribute buffer; raises OSError on failure."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf syscall number unknown on {platform.machine()}")
    res = int(_libc.syscall(nr, cmd, ctypes.byref(attr), len(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


@dataclass(frozen=True)
class ProgRunStats:
    run_cnt: int
    run_time_ns: int


class RunStatsEnabler:
    """Keeps the kernel's BPF run-time statistics on while open."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._sysctl_was: str | None = None
        try:
            attr = ctypes.create_string_buffer(struct.pack("<I", _BPF_STATS_RUN_TIME), 8)
            self._fd = bpf_syscall(_BPF_ENABLE_STATS, attr)
        except OSError:
            # Older kernels: flip the sysctl and restore it on close.
            self._sysctl_was = _SYSCTL.read_text().strip()
            _SYSCTL.write_text("1\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._sysctl_was is not None:
            _SYSCTL.write_text(self._sysctl_was + "\n")
            self._sysctl_was = None


def prog_run_stats(prog_fd: int) -> ProgRunStats:
    """Run count and cumulative run time (ns) of one loaded BPF program."""
    info = ctypes.create_string_buffer(_INFO_SIZE)
    attr = ctypes.create_string_buffer(
        struct.pack("<IIQ", prog_fd, _INFO_SIZE, ctypes.addressof(info)), 16
    )
    bpf_syscall(_BPF_OBJ_GET_INFO_BY_FD, attr)
    run_time_ns, run_cnt = struct.unpack_from("<QQ", info.raw, _OFF_RUN_TIME_NS)
    return ProgRunStats(run_cnt=run_cnt, run_time_ns=run_time_ns)
