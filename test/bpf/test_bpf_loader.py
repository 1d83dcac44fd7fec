"""Loading: clear BpfUnavailable reasons, BTF offsets, listener seeding, the fallback
send hook, and the kernel's own statistics."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from bpf_loadgen import DelayServer, run_clients
from bpf_snapshots import BOTH_ENDS, assert_close, delta, exact_quantile
from conftest import require_bpf_privileges

from aviator.agent.bpf import BpfLatencySource, BpfUnavailable, EndpointKey, loader
from aviator.agent.bpf.btf import Btf, BtfError, sock_offsets
from aviator.agent.bpf.model import ip_from_raw16, ip_to_raw16
from aviator.agent.bpf.seed import listeners_from, parse_proc_net_tcp
from aviator.testing.waiting import BPF_COMPILE_BOUND_S

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 0 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 0 0
   2: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 0 0
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 0 0
   1: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 0 0
"""


def test_parse_proc_net_tcp_listeners_only() -> None:
    got = set(parse_proc_net_tcp(PROC_NET_TCP, v6=False))
    assert got == listeners_from([("127.0.0.1", 8080), ("0.0.0.0", 80)])


def test_parse_proc_net_tcp6() -> None:
    got = set(parse_proc_net_tcp(PROC_NET_TCP6, v6=True))
    assert got == listeners_from([("::1", 3000), ("::", 443)])


@pytest.mark.parametrize(
    ("ip", "text"),
    [("127.0.0.1", "127.0.0.1"), ("::ffff:10.1.2.3", "10.1.2.3"), ("fd00::0:1", "fd00::1")],
)
def test_address_normalisation(ip: str, text: str) -> None:
    assert ip_from_raw16(ip_to_raw16(ip)) == text


def test_btf_sock_offsets_of_running_kernel() -> None:
    offsets = sock_offsets(Btf.from_file())
    # sock_common starts with the address pair, then the port pair, family, state.
    assert offsets["skc_daddr"] == 0 and offsets["skc_rcv_saddr"] == 4
    assert offsets["skc_dport"] == 12 and offsets["skc_num"] == 14
    assert offsets["skc_family"] == 16 and offsets["skc_state"] == 18
    assert offsets["skc_v6_rcv_saddr"] == offsets["skc_v6_daddr"] + 16


def test_btf_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "btf"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(BtfError):
        Btf.from_file(bad)


def test_unprivileged_gets_a_clear_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_effective_capabilities", lambda: 0)
    with pytest.raises(BpfUnavailable, match="run as root or with CAP_BPF"):
        BpfLatencySource.load()


def test_old_kernel_without_tracepoints(tmp_path: Path) -> None:
    (tmp_path / "events" / "tcp" / "tcp_probe").mkdir(parents=True)
    with pytest.raises(BpfUnavailable, match="kernel too old: missing tracepoints"):
        loader.check_tracepoints(tmp_path)
    for tp, _ in loader._TRACEPOINTS:
        if not tp.startswith("syscalls:"):
            (tmp_path / "events" / tp.replace(":", "/")).mkdir(parents=True)
    with pytest.raises(BpfUnavailable, match="CONFIG_FTRACE_SYSCALLS"):
        loader.check_tracepoints(tmp_path)
    for tp, _ in loader._TRACEPOINTS:
        (tmp_path / "events" / tp.replace(":", "/")).mkdir(parents=True, exist_ok=True)
    assert loader.check_tracepoints(tmp_path) is False  # fallback send hook
    (tmp_path / "events" / "tcp" / "tcp_sendmsg_locked").mkdir()
    assert loader.check_tracepoints(tmp_path) is True


def test_missing_headers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.setattr(loader, "Path", lambda p: tmp_path / str(p).lstrip("/"))
    with pytest.raises(BpfUnavailable, match="kernel headers missing"):
        loader.check_headers()
    modules = tmp_path / "lib" / "modules" / os.uname().release
    (modules / "build" / "include" / "generated").mkdir(parents=True)
    with pytest.raises(BpfUnavailable, match=r"headers incomplete(.|\n)*-common"):
        loader.check_headers()
    (modules / "source" / "include" / "linux").mkdir(parents=True)
    (modules / "source" / "include" / "linux" / "kconfig.h").touch()
    loader.check_headers()


@pytest.mark.bpf
def test_compile_error_is_reported(tmp_path: Path) -> None:
    require_bpf_privileges()
    src = tmp_path / "broken.bpf.c"
    src.write_text("int oops(void *ctx) { return undefined_symbol; }\n")
    with pytest.raises(BpfUnavailable, match=r"failed to compile(.|\n)*undefined_symbol"):
        loader.load_program(max_sockets=16, max_endpoints=16, max_listeners=16, source=src)


@pytest.mark.bpf
def test_verifier_rejection_is_reported(tmp_path: Path) -> None:
    require_bpf_privileges()
    src = tmp_path / "unsafe.bpf.c"
    src.write_text(
        "BPF_ARRAY(a, u64, 4);\n"
        "TRACEPOINT_PROBE(tcp, tcp_probe) {\n"
        "    int k = 0; u64 *v = a.lookup(&k);\n"
        "    if (v) return v[args->data_len];\n"  # unbounded index into the value
        "    return 0;\n"
        "}\n"
    )
    with pytest.raises(BpfUnavailable, match="verifier rejected"):
        loader.load_program(max_sockets=16, max_endpoints=16, max_listeners=16, source=src)


@pytest.mark.bpf
def test_verifier_rejection_of_a_raw_hook_is_reported(tmp_path: Path) -> None:
    """Raw tracepoint programs are loaded on attach; their verifier log is kept too."""
    require_bpf_privileges()
    src = tmp_path / "unsafe_raw.bpf.c"
    stubs = "".join(
        f"TRACEPOINT_PROBE({tp.replace(':', ', ')}) {{ return 0; }}\n"
        for tp, _ in loader._TRACEPOINTS
    )
    src.write_text(
        "BPF_ARRAY(a, u64, 4);\n"
        + stubs
        + "int on_tcp_sendmsg_locked(struct bpf_raw_tracepoint_args *ctx) { return 0; }\n"
        "int on_tcp_probe(struct bpf_raw_tracepoint_args *ctx) {\n"
        "    int k = 0; u64 *v = a.lookup(&k);\n"
        "    if (v) return v[ctx->args[1] & 0xffff];\n"
        "    return 0;\n"
        "}\n"
    )
    with pytest.raises(BpfUnavailable, match="verifier rejected"):
        loader.load_program(max_sockets=16, max_endpoints=16, max_listeners=16, source=src)


@pytest.mark.bpf
@pytest.mark.timeout(BPF_COMPILE_BOUND_S)
def test_classic_tracepoints_measure_too() -> None:
    """Without raw tracepoints: tcp_probe with its arguments, sock_send_length for sends."""
    require_bpf_privileges()
    with BpfLatencySource.load(
        allow_raw_send=False,
        allow_raw_recv=False,  # the agent's map sizes (see conftest)
    ) as src:
        assert src.send_hook == "tracepoint:sock:sock_send_length"
        assert src.recv_hook == "tracepoint:tcp:tcp_probe"
        server = DelayServer("127.0.13.1", lambda: 0.005).start()
        try:
            samples = run_clients(server.host, server.port, 4, 25)
            snap = src.read()
        finally:
            server.stop()
    for role in BOTH_ENDS:
        d = delta({}, snap, EndpointKey(server.host, server.port, role))
        assert d.count == len(samples) == 100
        assert_close(d.hist.quantile(0.5), exact_quantile(samples, 0.5))


@pytest.mark.bpf
def test_stats_and_kernel_run_time(latency_source: BpfLatencySource) -> None:
    assert latency_source.send_hook == "raw_tracepoint:tcp_sendmsg_locked"
    assert latency_source.recv_hook == "raw_tracepoint:tcp_probe"
    latency_source.enable_run_stats()
    before = latency_source.run_stats()
    server = DelayServer("127.0.13.2", lambda: 0.0).start()
    try:
        run_clients(server.host, server.port, 2, 20)
    finally:
        server.stop()
    after = latency_source.run_stats()
    probe = "on_tcp_probe"
    runs = after[probe][0] - before[probe][0]
    assert runs >= 80  # 40 requests and 40 responses received, at least
    assert after[probe][1] > before[probe][1]
    latency_source.read()  # endpoints are tracked once read (not only after other tests')
    stats = latency_source.stats()
    assert stats["requests_completed"] >= 80
    assert stats["endpoints_tracked"] >= 2
    assert 0 <= stats["sockets_tracked"] <= stats["sockets_capacity"]
    assert socket.has_ipv6
