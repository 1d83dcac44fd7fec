"""The kernel's bucket index (bpf/histogram.h) equals the Python one, bit for bit.

The index code is compiled into a raw tracepoint program and run on chosen values
with BPF_PROG_TEST_RUN (the program's return value is the index).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import require_bpf_privileges
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.agent.bpf import abi
from aviator.agent.bpf.loader import SOURCE
from aviator.agent.bpf.runstats import bpf_syscall
from aviator.latency.histogram import MAX_EXP, NUM_BUCKETS, SUB_BITS, bucket_index

pytestmark = pytest.mark.bpf

_BPF_PROG_TEST_RUN = 10
_PROGRAM = b"""
#include "histogram.h"
int index_of(struct bpf_raw_tracepoint_args *ctx) {
    return bucket_index(ctx->args[0]);
}
"""


@pytest.fixture(scope="module")
def kernel_index() -> Iterator[Any]:
    require_bpf_privileges()
    import bcc

    bpf = bcc.BPF(text=_PROGRAM, cflags=[f"-I{SOURCE.parent}"])
    fd = bpf.load_func(b"index_of", bcc.BPF.RAW_TRACEPOINT).fd

    def run(value: int) -> int:
        ctx = ctypes.create_string_buffer(struct.pack("<Q", value), 8)
        attr = ctypes.create_string_buffer(80)
        struct.pack_into("<I", attr, 0, fd)
        struct.pack_into("<IIQ", attr, 40, 8, 0, ctypes.addressof(ctx))
        bpf_syscall(_BPF_PROG_TEST_RUN, attr)
        return int(struct.unpack_from("<I", attr.raw, 4)[0])

    yield run
    bpf.cleanup()


def test_kernel_histogram_constants_match() -> None:
    """The constants histogram.h computes with (from latency.h) are Python's."""
    a = abi.default()
    assert (a.hist_sub_bits, a.hist_max_exp, a.num_buckets) == (SUB_BITS, MAX_EXP, NUM_BUCKETS)


def test_boundaries(kernel_index: Any) -> None:
    values = [
        0,
        1,
        15,
        16,
        17,
        31,
        32,
        33,
        1000,
        2**31 - 1,
        2**31,
        2**32 - 1,
        2**32,
        2**63,
        2**64 - 1,
    ]
    values += [(16 + s) << (e - 4) for e in range(4, 32) for s in range(16)]
    values += [((16 + s) << (e - 4)) - 1 for e in range(5, 33) for s in range(16)]
    for v in values:
        assert kernel_index(v) == bucket_index(v), v


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1) | st.integers(min_value=0, max_value=10**7))
def test_random_values(kernel_index: Any, value: int) -> None:
    assert kernel_index(value) == bucket_index(value)
