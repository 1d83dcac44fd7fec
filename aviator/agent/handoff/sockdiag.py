"""NETLINK_SOCK_DIAG messages for TCP sockets, encoded and decoded (pure: no I/O).

Three requests serve to end a connection the way `ss -K` does, and safely:

- a dump (`SOCK_DIAG_BY_FAMILY` with NLM_F_DUMP) of one address family's TCP sockets
  in given states, answered by one `inet_diag_msg` per socket: its 4-tuple, interface
  and *cookie* (the kernel's id of that socket);
- a query of one socket (the same request without NLM_F_DUMP, naming it by tuple and
  cookie), whose answer carries its queues: bytes received and not yet read by the
  application (`rqueue`: a request has arrived) and bytes sent and not yet acknowledged
  (`wqueue`: a response is still on its way);
- `SOCK_DESTROY` of one socket, named by family, 4-tuple, interface and cookie. The
  kernel looks the tuple up (falling back to the *listening* socket on the local
  address when no connection matches) and then compares the cookie, so a destroy
  always carries the cookie the dump returned: a connection that is gone, or a tuple
  reused by another connection, gets ENOENT/ESTALE instead of ending something else.

The kernel answers a destroy with an NLMSG_ERROR message (error 0 is the ACK).
Layouts (all host byte order except the ports and addresses of `inet_diag_sockid`,
which are network order): nlmsghdr {u32 len; u16 type; u16 flags; u32 seq; u32 pid},
inet_diag_req_v2 {u8 family, protocol, ext, pad; u32 states; sockid},
inet_diag_sockid {be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]},
inet_diag_msg {u8 family, state, timer, retrans; sockid; u32 expires, rqueue, wqueue,
uid, inode}.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
IPPROTO_TCP = 6
TCP_ESTABLISHED = 1
ALL_STATES = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")
_SOCKID = struct.Struct("!HH16s16s")  # ports and addresses: network order
_SOCKID_TAIL = struct.Struct("=III")  # interface and cookie: host order
_REQ_HEAD = struct.Struct("=BBBBI")
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
SOCKID_SIZE = _SOCKID.size + _SOCKID_TAIL.size  # 48
REQUEST_SIZE = _NLMSGHDR.size + _REQ_HEAD.size + SOCKID_SIZE  # 72
MSG_SIZE = _MSG_HEAD.size + SOCKID_SIZE + _MSG_TAIL.size  # 72


class SockDiagError(ValueError):
    """A malformed netlink message."""


@dataclass(frozen=True)
class DiagSocket:
    """One TCP socket as the kernel's dump names it. Addresses are text (IPv4 for
    AF_INET; IPv6, v4-mapped included, for AF_INET6); `local`/`remote` are (ip, port)."""

    family: int
    state: int
    local: tuple[str, int]
    remote: tuple[str, int]
    interface: int
    cookie: int
    inode: int = 0
    rqueue: int = 0
    wqueue: int = 0


def _addr_bytes(family: int, ip: str) -> bytes:
    packed = ipaddress.ip_address(ip).packed
    if family == socket.AF_INET:
        if len(packed) != 4:
            raise ValueError(f"{ip} is not an IPv4 address")
        return packed + b"\0" * 12
    if len(packed) != 16:
        raise ValueError(f"{ip} is not an IPv6 address")
    return packed


def _addr_text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def _sockid(
    family: int, local: tuple[str, int], remote: tuple[str, int], iface: int, cookie: int
) -> bytes:
    head = _SOCKID.pack(
        local[1], remote[1], _addr_bytes(family, local[0]), _addr_bytes(family, remote[0])
    )
    return head + _SOCKID_TAIL.pack(iface, cookie & 0xFFFFFFFF, cookie >> 32)


def _message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def encode_dump(seq: int, family: int, states: int = 1 << TCP_ESTABLISHED) -> bytes:
    """A dump request for the TCP sockets of `family` in `states` (a bit mask)."""
    body = _REQ_HEAD.pack(family, IPPROTO_TCP, 0, 0, states) + b"\0" * SOCKID_SIZE
    return _message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def encode_query(seq: int, sock: DiagSocket) -> bytes:
    """A request for the current state of exactly `sock` (by tuple and cookie)."""
    body = _REQ_HEAD.pack(sock.family, IPPROTO_TCP, 0, 0, ALL_STATES)
    body += _sockid(sock.family, sock.local, sock.remote, sock.interface, sock.cookie)
    return _message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, body)


def encode_destroy(seq: int, sock: DiagSocket) -> bytes:
    """SOCK_DESTROY of exactly `sock` (its cookie included), acknowledged."""
    body = _REQ_HEAD.pack(sock.family, IPPROTO_TCP, 0, 0, ALL_STATES)
    body += _sockid(sock.family, sock.local, sock.remote, sock.interface, sock.cookie)
    return _message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, body)


@dataclass(frozen=True)
class Message:
    type: int
    flags: int
    seq: int
    payload: bytes


def split_messages(data: bytes) -> Iterator[Message]:
    """The netlink messages in one datagram (each padded to 4 bytes)."""
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            raise SockDiagError(f"netlink message of length {length} at {pos} overruns {len(data)}")
        yield Message(msg_type, flags, seq, data[pos + _NLMSGHDR.size : pos + length])
        pos += (length + 3) & ~3
    if pos < len(data) and data[pos:].strip(b"\0"):
        raise SockDiagError("trailing bytes after the last netlink message")


def decode_socket(payload: bytes) -> DiagSocket:
    """An `inet_diag_msg` (attributes after it are ignored)."""
    if len(payload) < MSG_SIZE:
        raise SockDiagError(f"inet_diag_msg of {len(payload)} bytes, want {MSG_SIZE}")
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(payload, 0)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise SockDiagError(f"address family {family}")
    sport, dport, src, dst = _SOCKID.unpack_from(payload, _MSG_HEAD.size)
    iface, c_lo, c_hi = _SOCKID_TAIL.unpack_from(payload, _MSG_HEAD.size + _SOCKID.size)
    _expires, rqueue, wqueue, _uid, inode = _MSG_TAIL.unpack_from(
        payload, _MSG_HEAD.size + SOCKID_SIZE
    )
    return DiagSocket(
        family=family,
        state=state,
        local=(_addr_text(family, src), sport),
        remote=(_addr_text(family, dst), dport),
        interface=iface,
        cookie=c_hi << 32 | c_lo,
        inode=inode,
        rqueue=rqueue,
        wqueue=wqueue,
    )


def encode_socket(sock: DiagSocket) -> bytes:
    """The `inet_diag_msg` the kernel would send for `sock` (the inverse of
    decode_socket, for tests and fakes)."""
    head = _MSG_HEAD.pack(sock.family, sock.state, 0, 0)
    sockid = _sockid(sock.family, sock.local, sock.remote, sock.interface, sock.cookie)
    return head + sockid + _MSG_TAIL.pack(0, sock.rqueue, sock.wqueue, 0, sock.inode)


def decode_error(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR payload (0: acknowledged)."""
    if len(payload) < 4:
        raise SockDiagError("NLMSG_ERROR payload too short")
    error: int = struct.unpack_from("=i", payload, 0)[0]
    return -error
