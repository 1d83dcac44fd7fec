"""sock_diag encoding: layouts match the kernel's structs, round trips, framing."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.agent.handoff import sockdiag
from aviator.agent.handoff.sockdiag import DiagSocket

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@st.composite
def diag_sockets(draw: st.DrawFn) -> DiagSocket:
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    addrs = v4 if family == socket.AF_INET else v6
    return DiagSocket(
        family=family,
        state=draw(st.integers(0, 255)),
        local=(draw(addrs), draw(ports)),
        remote=(draw(addrs), draw(ports)),
        interface=draw(st.integers(0, 2**32 - 1)),
        cookie=draw(st.integers(0, 2**64 - 1)),
        inode=draw(st.integers(0, 2**32 - 1)),
        rqueue=draw(st.integers(0, 2**32 - 1)),
        wqueue=draw(st.integers(0, 2**32 - 1)),
    )


class SockId(ctypes.Structure):
    _fields_ = [
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("src", ctypes.c_uint8 * 16),
        ("dst", ctypes.c_uint8 * 16),
        ("iface", ctypes.c_uint32),
        ("cookie", ctypes.c_uint32 * 2),
    ]


class ReqV2(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("ext", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("states", ctypes.c_uint32),
        ("id", SockId),
    ]


def test_sizes_are_the_kernels() -> None:
    assert ctypes.sizeof(SockId) == sockdiag.SOCKID_SIZE == 48
    assert sockdiag.REQUEST_SIZE == 16 + ctypes.sizeof(ReqV2) == 72
    assert sockdiag.MSG_SIZE == 72


@given(diag_sockets(), st.integers(0, 2**32 - 1))
def test_destroy_request_layout(sock: DiagSocket, seq: int) -> None:
    data = sockdiag.encode_destroy(seq, sock)
    (msg,) = sockdiag.split_messages(data)
    assert (msg.type, msg.seq) == (sockdiag.SOCK_DESTROY, seq)
    assert msg.flags == sockdiag.NLM_F_REQUEST | sockdiag.NLM_F_ACK
    req = ReqV2.from_buffer_copy(msg.payload)
    assert (req.family, req.protocol, req.states) == (sock.family, 6, sockdiag.ALL_STATES)
    assert socket.ntohs(req.id.sport) == sock.local[1]
    assert socket.ntohs(req.id.dport) == sock.remote[1]
    n = 4 if sock.family == socket.AF_INET else 16
    assert bytes(req.id.src)[:n] == ipaddress.ip_address(sock.local[0]).packed
    assert bytes(req.id.dst)[:n] == ipaddress.ip_address(sock.remote[0]).packed
    assert req.id.iface == sock.interface
    assert req.id.cookie[1] << 32 | req.id.cookie[0] == sock.cookie


@given(diag_sockets(), st.integers(0, 2**32 - 1))
def test_query_names_one_socket_without_dumping(sock: DiagSocket, seq: int) -> None:
    (msg,) = sockdiag.split_messages(sockdiag.encode_query(seq, sock))
    assert (msg.type, msg.flags) == (sockdiag.SOCK_DIAG_BY_FAMILY, sockdiag.NLM_F_REQUEST)
    req = ReqV2.from_buffer_copy(msg.payload)
    assert req.id.cookie[1] << 32 | req.id.cookie[0] == sock.cookie
    assert socket.ntohs(req.id.sport) == sock.local[1]


@given(diag_sockets())
def test_inet_diag_msg_round_trip(sock: DiagSocket) -> None:
    assert sockdiag.decode_socket(sockdiag.encode_socket(sock)) == sock


@given(st.lists(st.binary(max_size=40), max_size=5), st.integers(0, 2**32 - 1))
def test_messages_split_at_their_padded_lengths(payloads: list[bytes], seq: int) -> None:
    data = b""
    for p in payloads:
        one = struct.pack("=IHHII", 16 + len(p), 20, 0, seq, 0) + p
        data += one + b"\0" * (-len(one) % 4)
    assert [m.payload for m in sockdiag.split_messages(data)] == payloads


def test_malformed_input_is_refused() -> None:
    with pytest.raises(sockdiag.SockDiagError):
        list(sockdiag.split_messages(struct.pack("=IHHII", 400, 20, 0, 1, 0)))
    with pytest.raises(sockdiag.SockDiagError):
        sockdiag.decode_socket(b"\x02" * 10)
    assert sockdiag.decode_error(struct.pack("=i", -2)) == 2
    assert sockdiag.decode_error(struct.pack("=i", 0)) == 0


def test_dump_asks_for_established_tcp() -> None:
    (msg,) = sockdiag.split_messages(sockdiag.encode_dump(7, socket.AF_INET6))
    req = ReqV2.from_buffer_copy(msg.payload)
    assert msg.flags & sockdiag.NLM_F_DUMP == sockdiag.NLM_F_DUMP
    assert (req.family, req.protocol, req.states) == (socket.AF_INET6, 6, 1 << 1)
