"""The BPF program's ABI header (bpf/latency.h) and what user space derives from it.

The real header must parse and give the reader everything it needs; a change made in
one place only (the header, or the histogram's constants in Python) must fail here;
the parser must refuse what it does not understand; layouts must be C's.
"""

from __future__ import annotations

import ctypes
import re
from types import SimpleNamespace
from typing import Any

import pytest

from aviator.agent.bpf import abi
from aviator.agent.bpf.reader import decode_endpoint
from aviator.latency import histogram

# The program's counters are published as aviator_agent_bpf_<name> metrics (and read
# by tests and benchmarks): renaming or reordering one is a visible change.
PUBLISHED_COUNTERS = (
    "rx_data_events",
    "tx_events",
    "state_events",
    "destroy_events",
    "requests_started",
    "requests_completed",
    "requests_aborted",
    "endpoints_full_drops",
    "sockets_added",
    "sockets_removed",
    "payload_events",
    "requests_cancelled",
    "streams_started",
    "streams_completed",
    "streams_aborted",
    "streams_full_drops",
    "h2_conns_full_drops",
    "h2_desyncs",
    "statuses_read",
    "statuses_unread",
    "probes_by_path",
    "probes_by_address",
    "h2_skims",
)


@pytest.fixture(scope="module")
def header_text() -> str:
    """The real header, found the way the loader finds the C source."""
    from aviator.agent.bpf.loader import SOURCE

    return (SOURCE.parent / abi.HEADER_NAME).read_text()


def test_real_header_gives_the_reader_everything() -> None:
    a = abi.default()
    assert a.counter_names == PUBLISHED_COUNTERS
    assert sorted(a.roles.values()) == ["client", "probe", "server"]
    assert a.header.const("NUM_COUNTERS") == len(PUBLISHED_COUNTERS)
    assert a.config_adopting == 0
    assert a.endpoint_key.size == 24
    assert a.listener_key.size == 24
    assert a.endpoint_value.field("buckets").count == a.num_buckets


def test_histogram_constants_are_the_headers() -> None:
    a = abi.default()
    assert a.hist_sub_bits == histogram.SUB_BITS
    assert a.hist_max_exp == histogram.MAX_EXP
    assert a.num_buckets == histogram.NUM_BUCKETS == 464
    # The last power of two, [2^HIST_MAX_EXP, 2^(HIST_MAX_EXP + 1)), fills the last
    # HIST_SUB_BUCKETS buckets; larger values saturate into the last one.
    sub = a.header.const("HIST_SUB_BUCKETS")
    assert histogram.bucket_lower(a.num_buckets - sub) == 1 << a.hist_max_exp
    assert histogram.bucket_index((1 << (a.hist_max_exp + 1)) - 1) == a.num_buckets - 1
    assert histogram.bucket_index(1 << (a.hist_max_exp + 1)) == a.num_buckets - 1


# One edit to the header alone; each must be refused (AbiError) by the user side.
ONE_PLACE_EDITS = {
    "bucket count": (r"#define HIST_MAX_EXP 31", "#define HIST_MAX_EXP 30"),
    "sub-buckets": (r"#define HIST_SUB_BITS 4", "#define HIST_SUB_BITS 5"),
    "NUM_BUCKETS off the scheme": (r"#define NUM_BUCKETS \(.*\)", "#define NUM_BUCKETS 465"),
    "buckets not NUM_BUCKETS": (r"u64 buckets\[NUM_BUCKETS\]", "u64 buckets[NUM_BUCKETS - 1]"),
    "port type": (r"u16 port;\n    u8 role;", "u32 port;\n    u8 role;"),
    "role gone": (r"    u8 role;\n", ""),
    "implicit key padding": (r"    u8 pad1;\n", ""),
    "counter gap": (r"CNT_TX_EVENTS,", "CNT_TX_EVENTS = 2,"),
    "counter count": (r"    NUM_COUNTERS,\n", ""),
    "unknown role": (r"ROLE_CLIENT = 2", "ROLE_PEER = 2"),
    "duplicate role": (r"ROLE_CLIENT = 2", "ROLE_CLIENT = 1"),
    "config slots": (r"    NUM_CONFIG,\n", ""),
    "listener addr": (
        r"struct listen_key \{\n    u8 addr\[16\];",
        "struct listen_key {\n    u8 addr[4];",
    ),
}


@pytest.mark.parametrize("edit", ONE_PLACE_EDITS, ids=list(ONE_PLACE_EDITS))
def test_a_change_in_the_header_alone_is_refused(header_text: str, edit: str) -> None:
    pattern, replacement = ONE_PLACE_EDITS[edit]
    edited, n = re.subn(pattern, replacement, header_text, count=1)
    assert n == 1, f"edit {edit!r} no longer applies to the header"
    with pytest.raises(abi.AbiError):
        abi.LatencyAbi.from_header(abi.parse(edited))


@pytest.mark.parametrize("name", ["SUB_BITS", "MAX_EXP", "NUM_BUCKETS"])
def test_a_change_in_the_python_histogram_alone_is_refused(
    header_text: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(histogram, name, getattr(histogram, name) + 1)
    with pytest.raises(abi.AbiError, match="histogram shape"):
        abi.LatencyAbi.from_header(abi.parse(header_text))


def test_layouts_are_cs() -> None:
    """The parser's offsets and sizes equal ctypes' (the platform C ABI) for every
    struct of the header."""
    header = abi.default().header
    for tag, s in header.structs.items():
        ctype = header.ctype(tag)
        assert ctypes.sizeof(ctype) == s.size, tag
        assert ctypes.alignment(ctype) == s.align, tag
        for f in s.fields:
            member = getattr(ctype, f.name)
            assert (member.offset, member.size) == (f.offset, f.size), (tag, f.name)


def _entry(a: abi.LatencyAbi, role: int) -> tuple[Any, Any]:
    key = a.header.ctype("ep_key")()
    key.addr[10] = key.addr[11] = 0xFF
    key.addr[12:16] = [10, 1, 2, 3]
    key.port = 8080
    key.role = role
    value = a.header.ctype("ep_val")()
    value.count, value.sum_us, value.max_us, value.rif, value.aborted = 3, 300, 200, -1, 1
    value.buckets[5] = 3
    return key, value


def test_decode_endpoint_from_header_types() -> None:
    a = abi.default()
    server = next(v for v, r in a.roles.items() if r == "server")
    decoded = decode_endpoint(a, *_entry(a, server))
    assert decoded is not None
    ep, counters = decoded
    assert (ep.ip, ep.port, ep.role) == ("10.1.2.3", 8080, "server")
    assert (counters.count, counters.sum_us, counters.max_us) == (3, 300, 200)
    assert counters.rif == 0  # a gauge below zero (map-full races) reads as none
    assert counters.aborted == 1
    assert counters.protocol == "opaque"  # no sample of a recognised protocol
    assert histogram.Histogram(counters.buckets).to_sparse() == {"5": 3}
    assert decode_endpoint(a, *_entry(a, 0)) is None  # no role: not an endpoint


def _fake_bpf(a: abi.LatencyAbi, **override: Any) -> Any:
    h = a.header
    maps = {
        b"endpoints": SimpleNamespace(Key=h.ctype("ep_key"), Leaf=h.ctype("ep_val")),
        b"ep_dirty": SimpleNamespace(Key=h.ctype("ep_key"), Leaf=ctypes.c_uint8),
        b"listeners": SimpleNamespace(Key=h.ctype("listen_key"), Leaf=ctypes.c_uint8),
        b"sockets": SimpleNamespace(Key=ctypes.c_uint64, Leaf=h.ctype("sock_state")),
        b"h2conns": SimpleNamespace(Key=ctypes.c_uint64, Leaf=h.ctype("h2_conn")),
        b"probe_ports": SimpleNamespace(Key=h.ctype("probe_key"), Leaf=h.ctype("probe_paths")),
        b"node_addrs": SimpleNamespace(Key=h.ctype("addr_key"), Leaf=ctypes.c_uint8),
        b"agent_conns": SimpleNamespace(Key=h.ctype("probe_key"), Leaf=ctypes.c_uint8),
        b"counters": SimpleNamespace(max_entries=len(a.counter_names)),
        b"config": SimpleNamespace(max_entries=h.const("NUM_CONFIG")),
    }
    for name, fields in override.items():
        maps[name.encode()] = SimpleNamespace(**{**vars(maps[name.encode()]), **fields})
    return maps


def test_check_program_accepts_the_headers_maps() -> None:
    a = abi.default()
    abi.check_program(a, _fake_bpf(a))


def test_check_program_refuses_other_maps() -> None:
    a = abi.default()

    class ShortVal(ctypes.Structure):
        _fields_ = [(f.name, ctypes.c_uint64) for f in a.endpoint_value.fields[:-1]] + [
            ("buckets", ctypes.c_uint64 * (a.num_buckets - 1))
        ]

    class MovedKey(ctypes.Structure):
        _fields_ = [("port", ctypes.c_uint16), ("role", ctypes.c_uint8), ("pad1", ctypes.c_uint8)]
        _fields_ += [("addr", ctypes.c_uint8 * 16), ("pad2", ctypes.c_uint32)]

    for bad in (
        {"endpoints": {"Leaf": ShortVal}},
        {"endpoints": {"Key": MovedKey}},
        {"sockets": {"Key": ctypes.c_uint32}},
        {"sockets": {"Leaf": a.header.ctype("ep_key")}},
        {"h2conns": {"Leaf": a.header.ctype("sock_state")}},
        {"counters": {"max_entries": len(a.counter_names) + 1}},
        {"config": {"max_entries": a.header.const("NUM_CONFIG") + 1}},
        {"probe_ports": {"Leaf": a.header.ctype("addr_key")}},
    ):
        with pytest.raises(abi.AbiError):
            abi.check_program(a, _fake_bpf(a, **bad))


# --- the parser ---------------------------------------------------------------------


def _wrap(body: str) -> str:
    return f"#ifndef G\n#define G\n{body}\n#endif\n"


def test_parser_subset() -> None:
    h = abi.parse(
        _wrap(
            "/* block\n comment */\n"
            "#define A 0x10  // hex\n"
            "#define B (A * 2 - (1 << 2))\n"
            "enum e { X, Y = B + 1, Z, };\n"
            "struct inner { u8 a; u32 b; };\n"
            "struct outer {\n  u16 c;\n  struct inner i[2];\n  s64 d;\n  u8 tail[A - 13];\n};"
        )
    )
    assert h.constants == {"A": 16, "B": 28, "X": 0, "Y": 29, "Z": 30}
    assert dict(h.enum("e")) == {"X": 0, "Y": 29, "Z": 30}
    assert (h.struct("inner").size, h.struct("inner").align) == (8, 4)
    outer = h.struct("outer")
    assert [(f.name, f.offset, f.size) for f in outer.fields] == [
        ("c", 0, 2),
        ("i", 4, 16),
        ("d", 24, 8),
        ("tail", 32, 3),
    ]
    assert outer.size == 40
    assert outer.implicit_padding == 2 + 4 + 5
    assert ctypes.sizeof(h.ctype("outer")) == 40


@pytest.mark.parametrize(
    "text",
    [
        _wrap("#include <x.h>"),
        _wrap("#define F(x) (x)"),
        _wrap("#define A"),
        _wrap("#define A 1u"),
        _wrap("#define A 010"),  # octal in C
        _wrap("#define A B"),  # used before defined
        _wrap("#define A 1 2"),
        _wrap("#define A 1\n#define A 2"),
        _wrap("#if 1\n#endif"),
        _wrap("struct s { int x; };"),  # unknown type
        _wrap("struct s { u8 x : 3; };"),  # bitfield
        _wrap("struct s { struct t x; };"),  # undeclared struct
        _wrap("struct s { u8 x; u8 x; };"),
        _wrap("struct s { u8 x[0]; };"),
        _wrap("struct s { };"),
        _wrap("struct s { u8 x; }"),  # no semicolon
        _wrap("enum e { A, A };"),
        _wrap("typedef u32 t;"),
        _wrap("static int x;"),
        "struct s { u8 x; };",  # no include guard
        _wrap("") + "#define A 1\n",  # after the guard
    ],
)
def test_parser_refuses_what_it_does_not_know(text: str) -> None:
    with pytest.raises(abi.AbiError):
        abi.parse(text)


def test_missing_header_is_an_abi_error(tmp_path: Any) -> None:
    with pytest.raises(abi.AbiError, match="cannot read"):
        abi.load(tmp_path / abi.HEADER_NAME)


def _counts(a: abi.LatencyAbi, **by_protocol: int) -> list[int]:
    out = [0] * (a.header.const("NUM_APP"))
    for value, proto in a.app_protocols.items():
        out[value] = by_protocol.get(proto, 0)
    return out


def test_endpoint_protocol_is_the_most_specific_one_measured() -> None:
    from aviator.agent.bpf.reader import endpoint_protocol

    a = abi.default()
    assert endpoint_protocol(a, _counts(a)) == "opaque"
    unknown = [1] + [0] * (a.header.const("NUM_APP") - 1)  # APP_UNKNOWN: nothing seen
    assert endpoint_protocol(a, unknown) == "opaque"
    assert endpoint_protocol(a, _counts(a, opaque=5, http1=1)) == "http1"
    assert endpoint_protocol(a, _counts(a, http1=9, h2=1)) == "h2"
    # A gRPC connection's first stream is timed before its trailers tell it is gRPC.
    assert endpoint_protocol(a, _counts(a, h2=3, grpc=30)) == "grpc"


def test_oldest_open_age_is_against_the_read_time() -> None:
    from aviator.agent.bpf.model import EndpointCounters, EndpointKey
    from aviator.agent.bpf.reader import with_oldest_open

    busy, idle = EndpointKey("10.0.0.1", 80, "server"), EndpointKey("10.0.0.2", 80, "server")
    c = EndpointCounters(
        buckets=[0] * histogram.NUM_BUCKETS, count=1, sum_us=1, max_us=1, rif=1, aborted=0
    )
    out = with_oldest_open({busy: c, idle: c}, {busy: 5_000_000}, now_ns=7_500_000)
    assert (out[busy].oldest_open_us, out[idle].oldest_open_us) == (2500, 0)
    assert out[idle] is c
