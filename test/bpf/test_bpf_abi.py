"""The compiled program's maps are what user space reads from bpf/latency.h.

BCC derives the maps' ctypes from the compiler's view of the program; the agent
derives its constants and layouts from its own parse of the header. They must agree,
and a program whose compiled layout differs from the parsed one must not load.
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest
from conftest import TEST_BOUND_S, require_bpf_privileges

from aviator.agent.bpf import BpfLatencySource, BpfUnavailable, abi, loader

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]


def test_compiled_maps_match_the_header(latency_source: BpfLatencySource) -> None:
    program = latency_source._program  # the loaded program behind the agent's handle
    a = program.abi
    assert a == abi.default()
    abi.check_program(a, program.bpf)  # also done on load; explicit here
    for name, tag in (("endpoints", "ep_key"), ("listeners", "listen_key")):
        key = program.bpf[name.encode()].Key
        for f in a.header.struct(tag).fields:
            assert (getattr(key, f.name).offset, getattr(key, f.name).size) == (f.offset, f.size)
    leaf = program.bpf[b"endpoints"].Leaf
    assert ctypes.sizeof(leaf) == a.endpoint_value.size
    assert len(leaf().buckets) == a.num_buckets


def test_stats_are_the_headers_counters(latency_source: BpfLatencySource) -> None:
    stats = latency_source.stats()
    assert set(abi.default().counter_names) <= set(stats)


def test_program_whose_layout_differs_from_the_header_is_refused(tmp_path: Path) -> None:
    """Compiled with u16 meaning u32, the program's keys are not the parsed header's."""
    require_bpf_privileges()
    src_dir = tmp_path / "bpf"
    shutil.copytree(loader.SOURCE.parent, src_dir)
    source = src_dir / loader.SOURCE.name
    text = source.read_text()
    include = '#include "latency.h"'
    assert include in text
    source.write_text(text.replace(include, "#define u16 u32\n" + include, 1))
    with pytest.raises(BpfUnavailable, match="does not match this agent"):
        loader.load_program(max_sockets=16, max_endpoints=16, max_listeners=16, source=source)
